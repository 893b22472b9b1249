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
