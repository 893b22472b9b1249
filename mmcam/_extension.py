"""Loads the compiled extension ``mmcam._C`` after checking it matches the running torch.

The extension links against libtorch's C++ ABI, which changes between torch releases. Its build-time
torch version is recorded in ``mmcam/_build_info.py`` (written by CMake) and compared with the running
torch *before* the shared library is loaded, so a mismatch gives a clear message instead of an
undefined-symbol error or a crash.
"""

from __future__ import annotations

import torch

_REBUILD_HINT = (
    "Rebuild mmcam against the installed torch: "
    "pip install --no-build-isolation --force-reinstall --no-deps ."
)


def _load():
    try:
        from mmcam import _build_info
    except ImportError as exc:  # the source tree without a build
        raise ImportError(
            "mmcam's compiled extension is not built (mmcam/_build_info.py is missing). Install with "
            "`pip install --no-build-isolation .` after installing torch (see README.md)."
        ) from exc
    if _build_info.TORCH_VERSION != torch.__version__:
        raise ImportError(
            f"mmcam was built against torch {_build_info.TORCH_VERSION} but torch {torch.__version__} "
            f"is installed. {_REBUILD_HINT}"
        )
    try:
        from mmcam import _C
    except ImportError as exc:
        raise ImportError(f"mmcam's extension mmcam._C failed to load: {exc}. {_REBUILD_HINT}") from exc
    return _C


_C = _load()


def build_info() -> dict:
    """How ``mmcam._C`` was built: ``mmcam_version``, ``torch_version``, ``cuda``, ``openmp``,
    ``parallel_backend`` (ATen's thread settings now) and ``cxx_standard``."""
    return dict(_C.build_info())
