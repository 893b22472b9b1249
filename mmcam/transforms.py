"""The geometric transforms π of the method (docs/method.md) as pixel affine matrices.

Every builder returns ``(matrix, dsize)``:

- ``matrix`` of shape :math:`(N, 2, 3)`: the source->destination **pixel** affine of kornia 0.9, the
  convention of :mod:`mmcam.ops` and :mod:`mmcam.ops.reference`. Integer coordinates ``(x, y)`` are pixel
  centres, ``x`` indexes columns (width) and ``y`` rows (height), and the warped image is
  ``dst(x, y) = src(M^-1 (x, y, 1))``. Built in float64 and returned in ``dtype`` (float32 by default)
  on ``device``.
- ``dsize = (H_out, W_out)``: python ints.

Image sizes are given as ``size=(H, W)``. Angles are in degrees; a positive angle turns the image
counter-clockwise *as displayed* (``y`` pointing down), the convention of :func:`torch.rot90` and kornia:
``affine_matrix(90)`` on a square image is ``torch.rot90(x, 1, dims=(-2, -1))``.

:func:`warp_images` applies a transform to an image batch in pure PyTorch (differentiable), sampling
directly in pixel coordinates, so flips and quarter turns are bit-exact. :func:`sample_transform` is
the seeded sampler of the training loop.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = [
    "FAMILIES",
    "POLICIES",
    "invert_matrix",
    "flip_matrix",
    "rot90_matrix",
    "translation_matrix",
    "resize_matrix",
    "affine_matrix",
    "sample_transform",
    "warp_images",
]

#: The four transform families of the paper, drawn uniformly by ``policy="all"``.
FAMILIES = ("flip", "rot90", "translate", "resize")
#: Every accepted ``policy`` of :func:`sample_transform` ("affine" is an extension).
POLICIES = ("all",) + FAMILIES + ("affine",)

_TRANSLATE_FRACTION = 0.3  # translation uniform in +-30 % of W and H
_RESIZE_SIDES = tuple(range(192, 289, 8))  # square side for 240 x 240 images
_RESIZE_REFERENCE = 240
_AFFINE_ANGLE = 180.0
_AFFINE_SCALE = (0.8, 1.25)  # log-uniform, so 0.8 and 1.25 are equally likely
_AFFINE_SHEAR = 10.0
_AFFINE_TRANSLATE_FRACTION = 0.1


# ----------------------------------------------------------------------------------------- checks
def _check_int(value: int, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _check_size(size: Sequence[int], name: str) -> tuple[int, int]:
    """``size`` = (H, W), two positive ints."""
    if isinstance(size, torch.Size):
        size = tuple(size)
    if not isinstance(size, Sequence) or isinstance(size, str) or len(size) != 2:
        raise TypeError(f"{name} must be a pair (H, W) of ints, got {size!r}")
    h, w = size
    for v in (h, w):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{name} must be a pair (H, W) of ints, got {size!r}")
    if h < 1 or w < 1:
        raise ValueError(f"{name} must be positive, got ({h}, {w})")
    return h, w


def _check_real(t: torch.Tensor, name: str, shapes: Sequence[tuple], layout: str) -> torch.Tensor:
    """A finite real tensor whose shape is one of ``shapes`` (``None`` matches any size); returned as
    float64 on the CPU."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {layout}, got {type(t).__name__}")
    if t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{name} must be a real-valued tensor, got {t.dtype}")
    if not any(t.dim() == len(s) and all(want is None or want == got for want, got in zip(s, t.shape)) for s in shapes):
        raise ValueError(f"{name} must have shape {layout}, got {tuple(t.shape)}")
    t = t.detach().to(device="cpu", dtype=torch.float64)
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be finite")
    return t


def _check_pixel_matrix(matrix: torch.Tensor, n: int | None = None) -> None:
    if not isinstance(matrix, torch.Tensor):
        raise TypeError(f"matrix must be a torch.Tensor of shape (N, 2, 3), got {type(matrix).__name__}")
    if matrix.dim() != 3 or tuple(matrix.shape[1:]) != (2, 3) or (n is not None and matrix.shape[0] != n):
        want = f"({n}, 2, 3)" if n is not None else "(N, 2, 3)"
        raise ValueError(f"matrix must have shape {want}, got {tuple(matrix.shape)}")
    if not matrix.is_floating_point():
        raise TypeError(f"matrix must be a floating-point tensor, got {matrix.dtype}")


def _check_invertible(matrix: torch.Tensor) -> None:
    """Value check: every matrix finite with a non-zero determinant (a host sync)."""
    m = matrix.detach()
    det = m[:, 0, 0] * m[:, 1, 1] - m[:, 0, 1] * m[:, 1, 0]
    if not bool(torch.isfinite(m).all()) or not bool((det != 0).all()):
        raise ValueError("matrix must be finite and invertible (non-zero determinant of its 2x2 part)")


def _finish(m: torch.Tensor, dtype: torch.dtype, device: torch.device | str | None) -> torch.Tensor:
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    return m.to(device=device, dtype=dtype)


def _repeat(rows: list[list[float]], n: int) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64).expand(n, 2, 3).clone()


# -------------------------------------------------------------------------------------- builders
def invert_matrix(matrix: torch.Tensor) -> torch.Tensor:
    r"""Closed-form inverse of a batch of 2-D affine maps (no value check).

    Args:
        matrix: :math:`(N, 2, 3)` affine ``[A | t]``, floating point.

    Returns:
        :math:`(N, 2, 3)` ``[A^{-1} | -A^{-1} t]`` in the dtype of ``matrix``. Flips and quarter turns
        with integer offsets are inverted exactly.
    """
    _check_pixel_matrix(matrix)
    a, b, c = matrix[:, 0, 0], matrix[:, 0, 1], matrix[:, 0, 2]
    d, e, f = matrix[:, 1, 0], matrix[:, 1, 1], matrix[:, 1, 2]
    det = a * e - b * d
    ia, ib, id_, ie = e / det, -b / det, -d / det, a / det
    ic = -(ia * c + ib * f)
    if_ = -(id_ * c + ie * f)
    return torch.stack([torch.stack([ia, ib, ic], -1), torch.stack([id_, ie, if_], -1)], -2)


def flip_matrix(
    n: int,
    size: Sequence[int],
    *,
    horizontal: bool,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, tuple[int, int]]:
    r"""Flip the whole batch left-right (``horizontal=True``, ``torch.flip(x, (-1,))``) or up-down
    (``torch.flip(x, (-2,))``).

    Args:
        n: batch size N.
        size: image size ``(H, W)``.
        horizontal: flip the width axis (mirror left-right) if True, else the height axis.

    Returns:
        ``matrix`` :math:`(N, 2, 3)` and ``dsize = (H, W)``.
    """
    n = _check_int(n, "n", 0)
    h, w = _check_size(size, "size")
    if not isinstance(horizontal, bool):
        raise TypeError(f"horizontal must be a bool, got {horizontal!r}")
    rows = [[-1.0, 0.0, w - 1.0], [0.0, 1.0, 0.0]] if horizontal else [[1.0, 0.0, 0.0], [0.0, -1.0, h - 1.0]]
    return _finish(_repeat(rows, n), dtype, device), (h, w)


def rot90_matrix(
    k: torch.Tensor,
    size: Sequence[int],
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, tuple[int, int]]:
    r"""Rotate sample ``i`` by ``k[i] * 90`` degrees, exactly as ``torch.rot90(x[i], k[i], dims=(-2, -1))``.

    ``k = 1`` turns the image counter-clockwise as displayed: the top-right pixel ``(W-1, 0)`` lands on
    the top-left ``(0, 0)``, i.e. ``(x, y) -> (y, W-1-x)``.

    Args:
        k: integer tensor of shape :math:`(N,)` with values in ``{0, 1, 2, 3}``.
        size: image size ``(H, W)``.

    Returns:
        ``matrix`` :math:`(N, 2, 3)` and ``dsize``: ``(H, W)`` for even ``k``, ``(W, H)`` for odd ``k``.

    Raises:
        ValueError: for a non-square image whose ``k`` mix odd and even values (the output sizes
            would differ within the batch).
    """
    if not isinstance(k, torch.Tensor):
        raise TypeError(f"k must be an integer torch.Tensor of shape (N,), got {type(k).__name__}")
    if k.dtype.is_floating_point or k.is_complex() or k.dtype == torch.bool:
        raise TypeError(f"k must be an integer tensor, got {k.dtype}")
    if k.dim() != 1:
        raise ValueError(f"k must have shape (N,), got {tuple(k.shape)}")
    h, w = _check_size(size, "size")
    k = k.detach().cpu().long()
    if not bool(((k >= 0) & (k <= 3)).all()):
        raise ValueError(f"k must hold values in {{0, 1, 2, 3}}, got {k.tolist()}")
    odd = k % 2 == 1
    if h != w and k.numel() > 0 and bool(odd.any()) and not bool(odd.all()):
        raise ValueError(
            f"k mixes odd and even quarter turns on a non-square {h}x{w} image; the output sizes would "
            f"differ within the batch (got k={k.tolist()})"
        )
    table = torch.tensor(
        [
            [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]],  # k = 0
            [[0.0, 1.0, 0.0], [-1.0, 0.0, w - 1.0]],  # k = 1: (x, y) -> (y, W-1-x)
            [[-1.0, 0.0, w - 1.0], [0.0, -1.0, h - 1.0]],  # k = 2: (x, y) -> (W-1-x, H-1-y)
            [[0.0, -1.0, h - 1.0], [1.0, 0.0, 0.0]],  # k = 3: (x, y) -> (H-1-y, x)
        ],
        dtype=torch.float64,
    )
    dsize = (w, h) if k.numel() > 0 and bool(odd[0]) else (h, w)
    return _finish(table[k], dtype, device), dsize


def translation_matrix(
    shift: torch.Tensor,
    size: Sequence[int],
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, tuple[int, int]]:
    r"""Translate sample ``i`` by ``shift[i] = (dx, dy)`` pixels (content moves right/down for positive
    values), zero fill, same output size.

    Args:
        shift: real tensor of shape :math:`(N, 2)`, ``(dx, dy)`` in pixels (need not be integers).
        size: image size ``(H, W)``.

    Returns:
        ``matrix`` :math:`(N, 2, 3)` and ``dsize = (H, W)``.
    """
    s = _check_real(shift, "shift", [(None, 2)], "(N, 2)")
    h, w = _check_size(size, "size")
    m = _repeat([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], s.shape[0])
    m[:, :, 2] = s
    return _finish(m, dtype, device), (h, w)


def resize_matrix(
    n: int,
    size: Sequence[int],
    out_size: Sequence[int],
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, tuple[int, int]]:
    r"""Resize to ``out_size`` like ``F.interpolate(x, out_size, mode="bilinear", align_corners=True)``.

    Pixel centres are scaled about pixel 0: ``x_out = x * (W_out - 1) / (W - 1)`` (same for ``y``).
    An axis of size 1 can only be "resized" to size 1 (the map would not be invertible otherwise).

    Args:
        n: batch size N.
        size: input size ``(H, W)``.
        out_size: output size ``(H_out, W_out)``.

    Returns:
        ``matrix`` :math:`(N, 2, 3)` and ``dsize = out_size``.
    """
    n = _check_int(n, "n", 0)
    h, w = _check_size(size, "size")
    ho, wo = _check_size(out_size, "out_size")
    for name, a, b in (("H", h, ho), ("W", w, wo)):
        if (a == 1) != (b == 1):
            raise ValueError(
                f"resize_matrix cannot map {name}={a} to {name}_out={b}: with pixel-centre scaling an "
                f"axis of size 1 only maps to size 1 (size={(h, w)}, out_size={(ho, wo)})"
            )
    sx = 1.0 if w == 1 else (wo - 1.0) / (w - 1.0)
    sy = 1.0 if h == 1 else (ho - 1.0) / (h - 1.0)
    return _finish(_repeat([[sx, 0.0, 0.0], [0.0, sy, 0.0]], n), dtype, device), (ho, wo)


def _cos_sin_degrees(angle: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of angles in degrees, exact at multiples of 90 degrees (float64)."""
    q = torch.round(angle / 90.0)
    r = torch.deg2rad(angle - 90.0 * q)
    c, s = torch.cos(r), torch.sin(r)
    q = q.remainder(4.0)
    cos = torch.where(q == 0, c, torch.where(q == 1, -s, torch.where(q == 2, -c, s)))
    sin = torch.where(q == 0, s, torch.where(q == 1, c, torch.where(q == 2, -s, -c)))
    return cos, sin


def affine_matrix(
    angle: torch.Tensor,
    size: Sequence[int],
    *,
    scale: torch.Tensor | None = None,
    shear: torch.Tensor | None = None,
    translation: torch.Tensor | None = None,
    center: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, tuple[int, int]]:
    r"""General affine map per sample, about ``center``, same output size.

    Composition (applied right to left to pixel coordinates ``p``)::

        M p = T(center + translation) · R(angle) · S(scale) · Sh(shear) · T(-center) p

    i.e. about the centre: shear first, then scale, then rotate, then translate.

    - ``R(a) = [[cos a, sin a], [-sin a, cos a]]``: positive ``a`` turns counter-clockwise as displayed
      (kornia's :func:`get_rotation_matrix2d`); ``a = 90`` on a square image is ``torch.rot90(x, 1)``.
      Multiples of 90 degrees are exact.
    - ``S = diag(s_x, s_y)``.
    - ``Sh = Sh_y · Sh_x`` with ``Sh_x: x += tan(sh_x) * y`` then ``Sh_y: y += tan(sh_y) * x``
      (positive tangents; kornia's :func:`get_shear_matrix2d` uses negative ones).

    Args:
        angle: rotation in degrees, shape :math:`(N,)`.
        size: image size ``(H, W)``.
        scale: :math:`(N,)` isotropic or :math:`(N, 2)` ``(s_x, s_y)``, non-zero; default 1.
        shear: :math:`(N, 2)` ``(sh_x, sh_y)`` in degrees, each in ``(-90, 90)``; default 0.
        translation: :math:`(N, 2)` ``(dx, dy)`` in pixels; default 0.
        center: :math:`(N, 2)` ``(cx, cy)`` in pixels; default the image centre ``((W-1)/2, (H-1)/2)``.

    Returns:
        ``matrix`` :math:`(N, 2, 3)` and ``dsize = (H, W)``.
    """
    a = _check_real(angle, "angle", [(None,)], "(N,)")
    n = a.shape[0]
    h, w = _check_size(size, "size")

    if scale is None:
        s = torch.ones(n, 2, dtype=torch.float64)
    else:
        s = _check_real(scale, "scale", [(n,), (n, 2)], f"({n},) or ({n}, 2)")
        s = s[:, None].expand(n, 2) if s.dim() == 1 else s
        if not bool((s != 0).all()):
            raise ValueError("scale must be non-zero")
    if shear is None:
        tan_x = tan_y = torch.zeros(n, dtype=torch.float64)
    else:
        sh = _check_real(shear, "shear", [(n, 2)], f"({n}, 2)")
        if not bool((sh.abs() < 90).all()):
            raise ValueError("shear angles must lie in (-90, 90) degrees")
        tan_x, tan_y = torch.tan(torch.deg2rad(sh[:, 0])), torch.tan(torch.deg2rad(sh[:, 1]))
    t = (
        torch.zeros(n, 2, dtype=torch.float64)
        if translation is None
        else _check_real(translation, "translation", [(n, 2)], f"({n}, 2)")
    )
    if center is None:
        ctr = torch.tensor([(w - 1) / 2.0, (h - 1) / 2.0], dtype=torch.float64).expand(n, 2)
    else:
        ctr = _check_real(center, "center", [(n, 2)], f"({n}, 2)")

    cos, sin = _cos_sin_degrees(a)
    one = torch.ones_like(cos)
    rot = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], -2)
    scl = torch.diag_embed(s)
    shr = torch.stack([torch.stack([one, tan_x], -1), torch.stack([tan_y, tan_y * tan_x + one], -1)], -2)
    lin = rot @ scl @ shr  # (N, 2, 2)
    offset = ctr + t - (lin @ ctr[:, :, None])[:, :, 0]
    m = torch.cat([lin, offset[:, :, None]], dim=-1)
    return _finish(m, dtype, device), (h, w)


# ---------------------------------------------------------------------------------------- sampler
def _uniform(shape: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
    """U[0, 1) float64 on the CPU, drawn from ``generator`` (on its device)."""
    dev = generator.device if generator is not None else torch.device("cpu")
    return torch.rand(shape, generator=generator, device=dev, dtype=torch.float64).cpu()


def _randint(low: int, high: int, shape: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
    dev = generator.device if generator is not None else torch.device("cpu")
    return torch.randint(low, high, shape, generator=generator, device=dev).cpu()


def sample_transform(
    n: int,
    size: Sequence[int],
    *,
    policy: str = "all",
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, tuple[int, int], str]:
    r"""Draw a random transform π for a batch (docs/method.md).

    All randomness comes from ``generator`` (the global generator when ``None``): the same seed gives
    the same ``(matrix, dsize, family)``.

    Policies:

    - ``"all"``: one family per batch, uniformly among ``"flip"``, ``"rot90"``, ``"translate"``,
      ``"resize"`` (the paper's four), then that family's parameters as below.
    - ``"flip"``: horizontal or vertical (probability 1/2 each), per batch.
    - ``"rot90"``: ``k`` uniform in ``{1, 2, 3}`` per sample (90/180/270 degrees, as ``torch.rot90``).
      For a non-square image ``k = 2`` for every sample, so the output keeps the input size.
    - ``"translate"``: ``(dx, dy)`` uniform in ``±0.3 W`` and ``±0.3 H`` per sample (zero fill).
    - ``"resize"``: a square side ``s`` uniform in ``{192, 200, ..., 288}`` per batch for 240 x 240
      images; for size ``(H, W)`` the output is ``(round(s H / 240), round(s W / 240))`` (halves up).
    - ``"affine"`` (extension): per sample angle uniform in ``±180°``, isotropic scale log-uniform in
      ``[0.8, 1.25]``, shear uniform in ``±10°`` on each axis, translation uniform in ``±0.1 W``,
      ``±0.1 H``; see :func:`affine_matrix`.

    Args:
        n: batch size N.
        size: image size ``(H, W)``.
        policy: one of :data:`POLICIES`.
        generator: the random source.

    Returns:
        ``(matrix, dsize, family)``: :math:`(N, 2, 3)` matrix, output size ``(H_out, W_out)`` and the
        name of the family drawn.
    """
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {', '.join(repr(p) for p in POLICIES)}; got {policy!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    n = _check_int(n, "n", 0)
    h, w = _check_size(size, "size")

    family = policy
    if policy == "all":
        family = FAMILIES[int(_randint(0, len(FAMILIES), (1,), generator))]

    if family == "flip":
        horizontal = bool(_randint(0, 2, (1,), generator) == 1)
        matrix, dsize = flip_matrix(n, (h, w), horizontal=horizontal, dtype=dtype, device=device)
    elif family == "rot90":
        k = _randint(1, 4, (n,), generator) if h == w else torch.full((n,), 2, dtype=torch.long)
        matrix, dsize = rot90_matrix(k, (h, w), dtype=dtype, device=device)
    elif family == "translate":
        bound = torch.tensor([_TRANSLATE_FRACTION * w, _TRANSLATE_FRACTION * h], dtype=torch.float64)
        shift = (2.0 * _uniform((n, 2), generator) - 1.0) * bound
        matrix, dsize = translation_matrix(shift, (h, w), dtype=dtype, device=device)
    elif family == "resize":
        side = _RESIZE_SIDES[int(_randint(0, len(_RESIZE_SIDES), (1,), generator))]
        out = tuple(int(math.floor(side * v / _RESIZE_REFERENCE + 0.5)) for v in (h, w))
        matrix, dsize = resize_matrix(n, (h, w), out, dtype=dtype, device=device)
    else:  # affine
        u = _uniform((n, 6), generator)
        angle = (2.0 * u[:, 0] - 1.0) * _AFFINE_ANGLE
        lo, hi = math.log(_AFFINE_SCALE[0]), math.log(_AFFINE_SCALE[1])
        scale = torch.exp(lo + u[:, 1] * (hi - lo))
        shear = (2.0 * u[:, 2:4] - 1.0) * _AFFINE_SHEAR
        bound = torch.tensor([_AFFINE_TRANSLATE_FRACTION * w, _AFFINE_TRANSLATE_FRACTION * h], dtype=torch.float64)
        translation = (2.0 * u[:, 4:6] - 1.0) * bound
        matrix, dsize = affine_matrix(
            angle, (h, w), scale=scale, shear=shear, translation=translation, dtype=dtype, device=device
        )
    return matrix, dsize, family


# ------------------------------------------------------------------------------------------- warp
def warp_images(
    images: torch.Tensor, matrix: torch.Tensor, dsize: Sequence[int], *, mode: str = "bilinear"
) -> torch.Tensor:
    r"""Warp an image batch by π: ``out(x, y) = images(M^-1 (x, y, 1))`` with zero fill.

    Sampling is done directly in pixel coordinates (no round trip through normalised coordinates):
    the source position is computed in float64, ``bilinear`` blends the four neighbours
    ``floor(.)`` and ``floor(.) + 1`` with out-of-image neighbours read as zero, ``nearest`` takes the
    nearest pixel (``torch.round``, ties to even, as ``grid_sample``). Flips and quarter turns therefore
    reproduce :func:`torch.flip` / :func:`torch.rot90` bit-exactly (for finite images), integer
    translations are exact, and the result is differentiable with respect to ``images`` (not ``matrix``).

    Args:
        images: :math:`(N, C, H, W)`; floating point for ``bilinear``, any dtype for ``nearest``
            (label masks).
        matrix: source->destination pixel affine :math:`(N, 2, 3)`, finite and invertible.
        dsize: output size ``(H_out, W_out)``.
        mode: ``"bilinear"`` or ``"nearest"``.

    Returns:
        :math:`(N, C, H_{out}, W_{out})` in the dtype of ``images``.
    """
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor of shape (N, C, H, W), got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(f"images must have shape (N, C, H, W), got {tuple(images.shape)}")
    if mode not in ("bilinear", "nearest"):
        raise ValueError(f"mode must be 'bilinear' or 'nearest'; got {mode!r}")
    if mode == "bilinear" and not images.is_floating_point():
        raise TypeError(f"images must be floating point for mode='bilinear', got {images.dtype}")
    n, c, h, w = images.shape
    if h == 0 or w == 0:
        raise ValueError(f"images has an empty spatial size {(h, w)}")
    _check_pixel_matrix(matrix, n)
    if matrix.device != images.device:
        raise ValueError(f"matrix is on {matrix.device} but images are on {images.device}")
    ho, wo = _check_size(dsize, "dsize")
    _check_invertible(matrix)

    inv = invert_matrix(matrix.detach().to(torch.float64))
    xs = torch.arange(wo, dtype=torch.float64, device=images.device)[None, None, :]
    ys = torch.arange(ho, dtype=torch.float64, device=images.device)[None, :, None]
    sx = inv[:, 0, 0, None, None] * xs + inv[:, 0, 1, None, None] * ys + inv[:, 0, 2, None, None]
    sy = inv[:, 1, 0, None, None] * xs + inv[:, 1, 1, None, None] * ys + inv[:, 1, 2, None, None]
    flat = images.reshape(n, c, h * w)

    def read(ix: torch.Tensor, iy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Values at integer positions (N, Ho, Wo) -> (N, C, Ho*Wo), and the in-image mask."""
        valid = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
        idx = (iy.clamp(0, h - 1) * w + ix.clamp(0, w - 1)).reshape(n, 1, ho * wo).expand(n, c, ho * wo)
        return flat.gather(2, idx), valid.reshape(n, 1, ho * wo)

    if mode == "nearest":
        # clamping to one pixel outside the image keeps validity and avoids int64 overflow
        ix, iy = torch.round(sx).clamp(-1, w).long(), torch.round(sy).clamp(-1, h).long()
        vals, valid = read(ix, iy)
        out = torch.where(valid, vals, torch.zeros((), dtype=images.dtype, device=images.device))
        return out.reshape(n, c, ho, wo)

    x0f, y0f = torch.floor(sx), torch.floor(sy)
    fx, fy = sx - x0f, sy - y0f
    # x0 < -1 or x0 > w - 1 leaves both neighbours outside: clamp to avoid int64 overflow
    x0, y0 = x0f.clamp(-2, w).long(), y0f.clamp(-2, h).long()
    total: torch.Tensor | None = None
    for ix, iy, wgt in (
        (x0, y0, (1.0 - fx) * (1.0 - fy)),
        (x0 + 1, y0, fx * (1.0 - fy)),
        (x0, y0 + 1, (1.0 - fx) * fy),
        (x0 + 1, y0 + 1, fx * fy),
    ):
        vals, valid = read(ix, iy)
        wgt = (wgt.reshape(n, 1, ho * wo) * valid).to(images.dtype)
        term = vals * wgt
        total = term if total is None else total + term
    assert total is not None  # the loop above runs four times
    return total.reshape(n, c, ho, wo)
