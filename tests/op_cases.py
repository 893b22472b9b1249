"""Random inputs for the operator tests: CAM batches, non-degenerate pixel affines and π families; and the
deterministic-algorithms switch the CUDA backward paths are selected by."""

from __future__ import annotations

import contextlib
import math

import torch
from hypothesis import strategies as st

from mmcam import transforms

FAMILIES = ("flip", "rot90", "translate", "resize", "affine")


def random_affine(n: int, src_size, dst_size, gen: torch.Generator, dtype=torch.float64) -> torch.Tensor:
    """(N, 2, 3) source->destination pixel affines: rotation, anisotropic scale and shear about the
    source centre, mapped near the destination centre, with |det| >= 0.25 (never degenerate)."""
    u = torch.rand(n, 6, generator=gen, dtype=torch.float64)
    angle = (2 * u[:, 0] - 1) * math.pi
    sx, sy = 0.5 + 1.5 * u[:, 1], 0.5 + 1.5 * u[:, 2]
    shear = (2 * u[:, 3] - 1) * 0.4
    c, s = torch.cos(angle), torch.sin(angle)
    a = torch.stack(
        [torch.stack([c * sx, -s * sy + shear * c * sx], -1), torch.stack([s * sx, c * sy + shear * s * sx], -1)], -2
    )  # (N, 2, 2), det = sx*sy
    hs, ws = src_size
    hd, wd = dst_size
    centre_src = torch.tensor([(ws - 1) / 2, (hs - 1) / 2], dtype=torch.float64)
    centre_dst = torch.tensor([(wd - 1) / 2, (hd - 1) / 2], dtype=torch.float64)
    jitter = (2 * u[:, 4:6] - 1) * torch.tensor([wd / 4, hd / 4], dtype=torch.float64)
    t = centre_dst + jitter - (a @ centre_src)
    return torch.cat([a, t[:, :, None]], dim=2).to(dtype)


def family_matrix(family: str, n: int, size, gen: torch.Generator, dtype=torch.float64):
    """(matrix, dsize) of one π family for images of ``size``, drawn from ``gen``."""
    matrix, dsize, _ = transforms.sample_transform(n, size, policy=family, generator=gen, dtype=dtype)
    return matrix, dsize


def cams(shape, gen: torch.Generator, dtype, *, non_contiguous: bool = False) -> torch.Tensor:
    """Raw CAM-like maps: a smooth positive blob plus noise, with negative regions; optionally returned
    as the strided view ``x[:, 1:]`` of a larger tensor."""
    n, c, h, w = shape
    extra = 1 if non_contiguous else 0
    base = torch.randn(n, c + extra, h, w, generator=gen, dtype=torch.float64)
    yy = torch.linspace(-1, 1, h, dtype=torch.float64)[:, None]
    xx = torch.linspace(-1, 1, w, dtype=torch.float64)[None, :]
    blob = 2.0 * torch.exp(-((xx - 0.3) ** 2 + (yy + 0.2) ** 2) * 3)
    x = (base + blob).to(dtype)
    return x[:, 1:] if non_contiguous else x


sizes = st.integers(min_value=1, max_value=64)
small_nc = st.integers(min_value=1, max_value=4)
seeds = st.integers(min_value=0, max_value=2**31 - 1)


@contextlib.contextmanager
def process_setting(get, set_, value):
    """A process-wide setting read by ``get()`` and written by ``set_(value)``, set to value inside a with
    block and restored afterwards."""
    before = get()
    set_(value)
    try:
        yield
    finally:
        set_(before)


def deterministic_algorithms(flag: bool):
    """torch.use_deterministic_algorithms(flag) inside a with block (CUDA: gather instead of atomic scatter
    in the backward pass), restored afterwards."""
    return process_setting(torch.are_deterministic_algorithms_enabled, torch.use_deterministic_algorithms, flag)
