"""PNG files of the report: exact RGB panels, the stand-alone overlay figure of a modality and the
training curves. Needs matplotlib (the ``report`` extra, ``pip install 'mmcam[report]'``); figures are
drawn on Agg canvases (no pyplot, no global backend change) and written atomically."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mmcam.atomic_files import atomic_write
from mmcam.report.overlays import CONTOUR_RGB, MASK_RGB
from mmcam.report.run_outputs import ReportError

__all__ = ["require_matplotlib", "heat_lut", "write_png", "overlay_figure", "curves_figure", "HEAT_COLORMAP"]

#: Colour map of the CAM heat maps (no pure green, so the contour colour stays unique).
HEAT_COLORMAP = "inferno"


def _unit_rgb(rgb) -> tuple[float, float, float]:
    """An 8-bit ``(r, g, b)`` colour as matplotlib's ``(r, g, b)`` in [0, 1]."""
    r, g, b = (float(v) / 255 for v in rgb)
    return r, g, b


def require_matplotlib() -> None:
    """Raise a :class:`ReportError` that names the missing extra when matplotlib is not installed."""
    import importlib

    try:
        for module in ("matplotlib", "PIL"):  # PIL: a dependency of matplotlib, writes the exact panels
            importlib.import_module(module)
    except ImportError as exc:
        raise ReportError(
            f"the report needs matplotlib ({exc}); install the optional extra: "
            "pip install 'mmcam[report]' (or pip install 'matplotlib>=3.7')"
        ) from None


def heat_lut(name: str = HEAT_COLORMAP, size: int = 256) -> np.ndarray:
    """``(size, 3)`` uint8 colour table of matplotlib colour map ``name``."""
    import matplotlib

    colours = matplotlib.colormaps[name](np.linspace(0.0, 1.0, size))[:, :3]
    return np.round(colours * 255).astype(np.uint8)


def write_png(path: Path, rgb: np.ndarray) -> Path:
    """Write an ``(H, W, 3)`` uint8 array as an RGB PNG, pixel for pixel, atomically."""
    from PIL import Image

    rgb = np.ascontiguousarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 array, got {rgb.shape} {rgb.dtype}")
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return _write_bytes(path, buffer.getvalue())


def _write_bytes(path: Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def _save_figure(figure, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return _write_bytes(path, buffer.getvalue())


def overlay_figure(
    path: Path, title: str, rows: Sequence[tuple[str, Sequence[np.ndarray]]], columns: Sequence[str], legend: str
) -> Path:
    """A stand-alone figure: one row per slice (``(row title, panels)``), one column per panel kind,
    with the title, column headings and a legend of the colours."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    n_rows, n_cols = len(rows), len(columns)
    figure = Figure(figsize=(2.6 * n_cols + 0.6, 2.6 * n_rows + 1.2), layout="constrained")
    axes = figure.subplots(n_rows, n_cols, squeeze=False)
    for r, (row_title, panels) in enumerate(rows):
        for c, panel in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(panel, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(columns[c], fontsize=10)
            if c == 0:
                ax.set_ylabel(row_title, fontsize=8)
    figure.suptitle(title, fontsize=11)
    handles = [
        Patch(color=_unit_rgb(CONTOUR_RGB), label="ground truth (contour)"),
        Patch(color=_unit_rgb(MASK_RGB), alpha=0.6, label="pseudo-mask"),
    ]
    figure.legend(
        handles=handles, loc="outside lower center", ncol=2, fontsize=8, title=legend, title_fontsize=8, frameon=False
    )
    return _save_figure(figure, path)


def curves_figure(
    path: Path, title: str, panels: Sequence[tuple[str, str, dict]], *, log_scale: Sequence[bool] = ()
) -> Path:
    """Line plots side by side: each panel ``(heading, y label, {label: [(step, value), ...]})``; points
    that are not finite are skipped; ``log_scale[i]``: logarithmic y axis of panel ``i``."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.2 * len(panels), 3.8), layout="constrained")
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for i, (ax, (heading, ylabel, series)) in enumerate(zip(axes, panels)):
        for label, points in series.items():
            points = [(s, v) for s, v in points if math.isfinite(v)]
            if points:
                steps, values = zip(*points)
                ax.plot(steps, values, marker="o" if len(points) < 30 else None, markersize=3, label=label)
        if i < len(log_scale) and log_scale[i] and any(v > 0 for pts in series.values() for _, v in pts):
            ax.set_yscale("log")
        ax.set_title(heading, fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if series:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no values recorded", ha="center", va="center", transform=ax.transAxes)
    figure.suptitle(title, fontsize=11)
    return _save_figure(figure, path)
