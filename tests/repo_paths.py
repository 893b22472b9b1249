"""The repository's root folder, for tests that read its sources, scripts and README (importable from any
test folder: pyproject.toml puts tests/ on pytest's pythonpath)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
