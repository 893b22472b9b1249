"""The one progress bar of mmcam's commands (prepare, synthetic data, training): tqdm on stderr, or a
silent bar with the same methods (update, set_postfix, close) when not enabled."""

from __future__ import annotations

from tqdm.auto import tqdm

__all__ = ["progress_bar"]


def progress_bar(
    total: int, *, enabled: bool, description: str | None = None, unit: str = "it", initial: int = 0
) -> tqdm:
    """A progress bar over ``total`` items starting at ``initial``; disabled bars print nothing."""
    return tqdm(total=total, initial=initial, disable=not enabled, desc=description, unit=unit, dynamic_ncols=True)
