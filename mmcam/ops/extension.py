"""Loads the compiled extension ``mmcam._C`` after checking it matches the running torch.

The extension links against libtorch's C++ ABI, which changes between torch releases. Its build-time
torch version is recorded in ``mmcam/_build_info.py`` (written by CMake) and compared with the running
torch *before* the shared library is loaded, so a mismatch gives a clear message instead of an
undefined-symbol error or a crash.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from types import ModuleType

import torch

_REBUILD_HINT = (
    "Rebuild mmcam against the installed torch: pip install --no-build-isolation --force-reinstall --no-deps ."
)


def _installed_package_dir() -> Path | None:
    """The folder of the installed (built) mmcam package, found through its distribution record."""
    try:
        dist = importlib.metadata.distribution("mmcam")
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in dist.files or ():
        if file.name == "_build_info.py" and file.parent.name == "mmcam":
            return Path(str(dist.locate_file(file))).parent
    return None


def _use_installed_build() -> bool:
    """Running inside a source checkout (e.g. ``python -m mmcam.train`` in the repository root) imports the
    checkout's unbuilt ``mmcam`` folder; then take the compiled parts (``_C``, ``_build_info``) from the
    installed package. Returns whether such a package was found."""
    import mmcam

    installed = _installed_package_dir()
    if installed is None or installed.resolve() == Path(mmcam.__file__).resolve().parent:
        return False
    mmcam.__path__.append(str(installed))
    return True


def _load() -> ModuleType:
    try:
        import mmcam._build_info as _build_info
    except ImportError:
        if not _use_installed_build():
            raise ImportError(
                "mmcam's compiled extension is not built (mmcam/_build_info.py is missing). Install with "
                "`pip install --no-build-isolation .` after installing torch (see README.md)."
            ) from None
        import mmcam._build_info as _build_info
    if _build_info.TORCH_VERSION != torch.__version__:
        raise ImportError(
            f"mmcam was built against torch {_build_info.TORCH_VERSION} but torch {torch.__version__} "
            f"is installed. {_REBUILD_HINT}"
        )
    try:
        import mmcam._C as _C
    except ImportError as exc:
        raise ImportError(f"mmcam's extension mmcam._C failed to load: {exc}. {_REBUILD_HINT}") from exc
    return _C


_C = _load()


def build_info() -> dict:
    """How ``mmcam._C`` was built: ``mmcam_version``, ``torch_version``; ``cuda`` (whether the CUDA kernels
    were built), ``cuda_status`` (one line: what was built, or why CUDA was left out),
    ``cuda_version`` and ``cuda_architectures`` (comma-separated CMake architectures such as
    ``"80-real,90-real"``, empty without CUDA); ``openmp``, ``parallel_backend`` (ATen's thread settings now)
    and ``cxx_standard``."""
    return dict(_C.build_info())
