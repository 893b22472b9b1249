"""mmcam: multi-modal class-activation maps with cross-modality equivariance.

Weakly supervised segmentation of multi-modal MRI (BraTS, MSD prostate) from slice-level labels, after
Patel & Dolz, Medical Image Analysis 77 (2022). The performance core is a fused C++ operator
(``mmcam.ops``) computing affine warp + CAM min-max normalisation + equivariance distance.
"""

from mmcam.ops.extension import build_info

__version__ = "0.1.0"

__all__ = ["build_info", "__version__"]
