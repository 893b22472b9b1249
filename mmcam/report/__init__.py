"""The report of a training run: one HTML page with, per modality (and the combined map), overlays of
image, ground-truth contour, CAM heat map and pseudo-mask for a few slices, the metrics table with its
protocol, and the training curves; every PNG is usable on its own.

::

    python -m mmcam.report RUN_DIR [--out RUN_DIR/report] [--split test] [--slices 4] [--checkpoint best]

or :func:`write_report` from Python. Needs matplotlib (``pip install 'mmcam[report]'``). Modules:
:mod:`~mmcam.report.run_outputs` (reading the run directory), :mod:`~mmcam.report.slices` (slice
choice, network outputs), :mod:`~mmcam.report.overlays` (exact RGB panels, numpy only),
:mod:`~mmcam.report.figures` (PNG files, matplotlib), :mod:`~mmcam.report.html` (the page),
:mod:`~mmcam.report.build` (assembly), :mod:`~mmcam.report.cli` (the command).
"""

from mmcam.report.run_outputs import ReportError


def write_report(*args, **kwargs):
    """See :func:`mmcam.report.build.write_report` (imported on first use: it loads torch)."""
    from mmcam.report.build import write_report as _write_report

    return _write_report(*args, **kwargs)


def main(argv=None) -> int:
    """See :func:`mmcam.report.cli.main`."""
    from mmcam.report.cli import main as _main

    return _main(argv)


__all__ = ["ReportError", "write_report", "main"]
