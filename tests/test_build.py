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


def test_cuda_kernels_include_no_torch_header():
    """DESIGN §3: the CUDA kernels compile with nvcc alone (CI compile-checks them), so they and the
    headers they use must not include torch, ATen or c10; only the *.cpp glue may."""
    import pathlib
    import re

    csrc = pathlib.Path(__file__).resolve().parent.parent / "csrc"
    kernels = sorted((csrc / "cuda").glob("*.cu"))
    assert kernels, "no CUDA kernels found under csrc/cuda"
    torch_include = re.compile(r'#\s*include\s*[<"](torch|ATen|c10)/')
    seen, queue = set(), list(kernels)
    while queue:
        path = queue.pop()
        if path in seen:
            continue
        seen.add(path)
        text = path.read_text()
        assert not torch_include.search(text), f"{path.relative_to(csrc)} includes a torch header"
        for name in re.findall(r'#\s*include\s*"([^"]+)"', text):
            queue.append(csrc / name)
    assert csrc / "mmcam_math.h" in seen  # the element math is shared with the CPU kernels
