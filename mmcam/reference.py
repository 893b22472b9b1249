"""Public name of the eager references of the fused operators, which live in :mod:`mmcam.ops.reference`."""

from mmcam.ops.reference import *  # noqa: F401,F403
from mmcam.ops.reference import __all__  # noqa: F401
