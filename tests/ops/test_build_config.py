"""The build's configure step decides what it builds (cmake/CudaBackend.cmake): the MMCAM_CUDA switch is
checked, `on` fails with the reason when CUDA cannot be built, `off` never builds CUDA. Runs CMake's
configure step only (seconds), against the torch of the running interpreter."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import pytest
import torch

from repo_paths import ROOT

ROOT = ROOT
pybind11 = pytest.importorskip("pybind11")
CMAKE = shutil.which(
    "cmake", path=os.pathsep.join([str(pathlib.Path(sys.executable).parent), os.environ.get("PATH", "")])
)
pytestmark = pytest.mark.skipif(CMAKE is None, reason="cmake not installed")


def configure(tmp_path, *defines, env=None):
    """Run CMake's configure step of the project into tmp_path; returns (exit code, output with runs of
    white space made one space: CMake wraps long messages)."""
    cmd = [
        CMAKE,
        "-S",
        str(ROOT),
        "-B",
        str(tmp_path / "build"),
        f"-DPython_EXECUTABLE={sys.executable}",
        f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
        *defines,
    ]
    full_env = {**os.environ, **(env or {})}
    result = subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=300)
    return result.returncode, " ".join((result.stdout + result.stderr).split())


def test_a_bad_switch_value_is_named(tmp_path):
    rc, out = configure(tmp_path, "-DMMCAM_CUDA=maybe")
    assert rc != 0
    assert "MMCAM_CUDA must be auto, on or off (got 'maybe')" in out


def test_off_builds_cpu_only_and_says_why(tmp_path):
    rc, out = configure(tmp_path, env={"MMCAM_CUDA": "off"})
    assert rc == 0, out
    assert "CUDA kernels left out, building CPU only: MMCAM_CUDA=off" in out
    assert "Looking for a CUDA compiler" not in out


@pytest.mark.skipif(torch.version.cuda is not None, reason="needs a CPU build of torch")
def test_on_with_a_cpu_torch_fails_with_the_reason(tmp_path):
    rc, out = configure(tmp_path, "-DMMCAM_CUDA=on")
    assert rc != 0
    assert "MMCAM_CUDA=on but the CUDA back end cannot be built" in out
    assert f"torch {torch.__version__} is a CPU build" in out


def test_a_bad_architecture_list_is_named(tmp_path):
    if torch.version.cuda is None or shutil.which("nvcc") is None:
        pytest.skip("needs a CUDA torch and nvcc (the list is read only when CUDA is built)")
    rc, out = configure(tmp_path, env={"TORCH_CUDA_ARCH_LIST": "sm90"})
    assert rc != 0
    assert "cannot read TORCH_CUDA_ARCH_LIST entry 'sm90'" in out


def path_without_nvcc() -> str:
    """PATH with every folder that holds an nvcc removed: a machine with no CUDA toolkit."""
    folders = os.environ.get("PATH", "").split(os.pathsep)
    return os.pathsep.join(f for f in folders if f and not os.access(os.path.join(f, "nvcc"), os.X_OK))


@pytest.mark.skipif(torch.version.cuda is None, reason="needs a CUDA build of torch")
@pytest.mark.parametrize("mode", ["auto", "on"])
def test_cuda_torch_without_a_cuda_compiler(tmp_path, mode):
    """auto: a CPU-only build with the reason; on: configure stops with that reason."""
    env = {"PATH": path_without_nvcc(), "MMCAM_CUDA": mode, "CUDACXX": ""}
    rc, out = configure(tmp_path, env=env)
    reason = "no working CUDA compiler found"
    if mode == "auto":
        assert rc == 0, out
        assert f"CUDA kernels left out, building CPU only: {reason}" in out
    else:
        assert rc != 0
        assert f"MMCAM_CUDA=on but the CUDA back end cannot be built: {reason}" in out
