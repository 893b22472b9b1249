"""Where a run's slice cache lives, and making it on first use: the synthetic phantoms under
``$MMCAM_HOME`` (default ``~/.cache/mmcam``) when no ``data`` is given, ``data`` itself when it is a
prepared cache, else a cache prepared next to the raw download. Training, evaluation, inference and the
report all find a run's cache here."""

from __future__ import annotations

import os
from pathlib import Path

from mmcam.data import DataError
from mmcam.data.build import BuildOptions, default_workers, prepare_raw
from mmcam.data.cache import INDEX_FILE
from mmcam.training import config as cfg

__all__ = ["mmcam_home", "synthetic_workdir", "cache_location", "resolve_cache"]


def mmcam_home() -> Path:
    return Path(os.environ.get("MMCAM_HOME", "~/.cache/mmcam")).expanduser()


def synthetic_workdir(config: cfg.TrainConfig) -> Path:
    """Where the synthetic phantoms of a config live (raw/ and cache/ inside)."""
    return mmcam_home() / f"synthetic-{config.synthetic_layout}-{config.synthetic_subjects}"


def cache_location(config: cfg.TrainConfig) -> Path:
    """Where the slice cache of a config is (or will be): the synthetic phantoms' cache (no ``data``),
    ``data`` itself when it is a cache, else ``cache`` or ``<data>-mmcam-cache`` next to the raw folder
    (``<data>-mmcam-cache-<size><fit>``, e.g. ``-256scale``, when slices are stored at a size ``size``, and
    ``-<folds>folds`` for a cross-validation split)."""
    if config.data is None:
        return synthetic_workdir(config) / "cache"
    data = Path(config.data)
    if (data / INDEX_FILE).is_file():
        return data
    if config.cache:
        return Path(config.cache)
    suffix = f"-{config.size}{config.fit}" if config.size is not None else ""
    suffix += f"-{config.folds}folds" if config.folds is not None else ""
    return data.parent / f"{data.name}-mmcam-cache{suffix}"


def resolve_cache(config: cfg.TrainConfig, log) -> Path:
    """The slice cache to train on (:func:`cache_location`), generated or prepared on first use."""
    if config.data is None:
        from mmcam.data.synthetic import prepare_synthetic

        workdir = synthetic_workdir(config)
        log(f"synthetic {config.synthetic_layout} phantoms: {workdir} (generated on first use)")
        return prepare_synthetic(workdir, config.synthetic_layout, config.synthetic_subjects, seed=0)
    data = Path(config.data)
    if not data.exists():
        raise DataError(f"--data {data}: no such folder")
    cache = cache_location(config)
    if not (cache / INDEX_FILE).is_file():
        log(f"preparing {data} into {cache}")
        prepare_raw(
            data,
            cache,
            dataset=config.dataset,
            options=BuildOptions(size=config.size, fit=config.fit),
            folds=config.folds,
            workers=default_workers(),
        )
    return cache
