"""The extension reports how it was built and refuses to load against another torch; the dispatcher has
a kernel for every mmcam op on every device the build reports."""

from __future__ import annotations

import importlib
import os

import pytest
import torch

import mmcam
from mmcam import _build_info
from mmcam.ops import extension as _extension

from repo_paths import ROOT


def test_build_info_reports_torch_openmp_and_cuda():
    info = mmcam.build_info()
    assert info["torch_version"] == torch.__version__
    assert info["openmp"] is True
    assert info["cuda"] is (_build_info.WITH_CUDA)
    assert info["mmcam_version"] == mmcam.__version__
    assert "OpenMP" in info["parallel_backend"]


MMCAM_OPS = (
    "equivariance_loss",
    "equivariance_loss_backward",
    "equivariance_terms",
    "equivariance_terms_backward",
    "warp_normalized",
    "warp_normalized_backward",
)


def test_build_info_says_what_cuda_build_was_made():
    info = mmcam.build_info()
    if info["cuda"]:
        assert info["cuda_status"].startswith("CUDA kernels built with CUDA ")
        assert info["cuda_version"].split(".")[0] == torch.version.cuda.split(".")[0]
        assert info["cuda_architectures"] and all(
            a.endswith(("-real", "-virtual")) for a in info["cuda_architectures"].split(",")
        )
    else:
        assert info["cuda_status"].startswith("CPU only: ")
        assert info["cuda_version"] == "" and info["cuda_architectures"] == ""
        if torch.version.cuda is None:
            assert "CPU build" in info["cuda_status"]


def test_build_matches_the_expected_row():
    """CI builds each row of the install matrix and says what it expects (MMCAM_EXPECT_CUDA=1 or 0)."""
    expected = os.environ.get("MMCAM_EXPECT_CUDA")
    if expected is None:
        pytest.skip("MMCAM_EXPECT_CUDA not set (only CI's build-matrix rows set it)")
    assert mmcam.build_info()["cuda"] is (expected == "1"), mmcam.build_info()["cuda_status"]


def test_dispatcher_has_a_kernel_for_every_op_on_every_built_device():
    import mmcam.ops  # noqa: F401  (loads the extension, which registers the ops)

    registered = sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("mmcam::"))
    assert registered == sorted(f"mmcam::{op}" for op in MMCAM_OPS)
    with_cuda = mmcam.build_info()["cuda"]
    for name in registered:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(name, "CPU"), name
        assert torch._C._dispatch_has_kernel_for_dispatch_key(name, "CUDA") is with_cuda, name


def test_loading_against_another_torch_fails_with_rebuild_hint(monkeypatch):
    monkeypatch.setattr(_build_info, "TORCH_VERSION", "1.0.0")
    with pytest.raises(ImportError, match=r"built against torch 1\.0\.0 .*pip install --no-build-isolation"):
        _extension._load()
    monkeypatch.undo()
    importlib.reload(_extension)  # loads again once the versions agree


def test_importable_from_the_repository_root():
    """`python -m mmcam.train` in a source checkout imports the checkout's mmcam folder; the compiled
    extension must still be found (from the installed package)."""
    import subprocess
    import sys

    root = ROOT
    result = subprocess.run(
        [sys.executable, "-c", "import mmcam.ops, mmcam; print(mmcam.build_info()['torch_version'])"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == torch.__version__


def test_cuda_kernels_include_no_torch_header():
    """README "Layout": the CUDA kernels compile with nvcc alone (CI compile-checks them), so they and the
    headers they use must not include torch, ATen or c10; only the *.cpp glue may."""
    import re

    csrc = ROOT / "csrc"
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
