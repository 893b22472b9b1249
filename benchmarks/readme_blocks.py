"""Generated blocks of the README: the text between a begin and an end marker (``<!-- name:begin -->``),
written by the benchmark scripts and read back by the tests."""

from __future__ import annotations

from pathlib import Path

from mmcam.atomic_files import atomic_write_text


def read_block(text: str, markers: tuple[str, str]) -> str:
    """The text between ``markers`` (begin, end) of ``text``, without the newline after the begin marker."""
    begin, end = markers
    return text.split(f"{begin}\n", 1)[1].split(end, 1)[0]


def replace_block(path: Path | str, markers: tuple[str, str], text: str) -> None:
    """Write ``text`` between ``markers`` (begin, end) of the file ``path`` (atomically; both markers must be
    there, else SystemExit naming them)."""
    path = Path(path)
    begin, end = markers
    content = path.read_text()
    if begin not in content or end not in content:
        raise SystemExit(f"error: {path} has no {begin} ... {end} block")
    head, rest = content.split(begin, 1)
    _, tail = rest.split(end, 1)
    atomic_write_text(path, f"{head}{begin}\n{text}{end}{tail}")
