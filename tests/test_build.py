"""The extension reports how it was built and refuses to load against another torch."""

from __future__ import annotations

import importlib

import pytest
import torch

import mmcam
from mmcam import _build_info, _extension


def test_build_info_reports_torch_openmp_and_cuda():
    info = mmcam.build_info()
    assert info["torch_version"] == torch.__version__
    assert info["openmp"] is True
    assert info["cuda"] is (_build_info.WITH_CUDA)
    assert info["mmcam_version"] == mmcam.__version__
    assert "OpenMP" in info["parallel_backend"]


def test_loading_against_another_torch_fails_with_rebuild_hint(monkeypatch):
    monkeypatch.setattr(_build_info, "TORCH_VERSION", "1.0.0")
    with pytest.raises(ImportError, match=r"built against torch 1\.0\.0 .*pip install --no-build-isolation"):
        _extension._load()
    monkeypatch.undo()
    importlib.reload(_extension)  # loads again once the versions agree


def test_importable_from_the_repository_root():
    """`python -m mmcam.train` in a source checkout imports the checkout's mmcam folder; the compiled
    extension must still be found (from the installed package)."""
    import pathlib
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parent.parent
    result = subprocess.run([sys.executable, "-c", "import mmcam.ops, mmcam; print(mmcam.build_info()['torch_version'])"],
                            cwd=root, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == torch.__version__
