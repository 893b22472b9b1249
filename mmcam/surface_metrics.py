"""Public name of the evaluation metrics (Dice, HD95, ASSD in mm, per-slice Dice), which live in
:mod:`mmcam.evaluation.surface_metrics`."""

from mmcam.evaluation.surface_metrics import *  # noqa: F401,F403
from mmcam.evaluation.surface_metrics import __all__  # noqa: F401
