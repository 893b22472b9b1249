"""``python -m mmcam.report``: see :mod:`mmcam.report.cli`."""

import sys

from mmcam.report.cli import main

sys.exit(main())
