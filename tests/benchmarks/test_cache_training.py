"""benchmarks/cache_training.py without training: the float32 whole-plane copy of the study's phantoms has
the same patients and split, float32 storage without the foreground crop, and the same slices within half
a uint16 step."""

from __future__ import annotations

import json

import numpy as np

from mmcam.data import SliceDataset

import ablation
import cache_training


def test_float32_copy_of_the_study_cache(tmp_path):
    args = ablation.parse_args(["--subjects", "5", "--fractions", "0.4,0.2,0.4", "--runs", str(tmp_path)])
    compact = ablation.study_cache(args)
    dense = cache_training.float32_cache(args, compact)
    index = json.loads((dense / "mmcam_cache.json").read_text())
    assert index["options"]["image_dtype"] == "float32" and index["options"]["crop_to_foreground"] is False
    assert json.loads((dense / "splits.json").read_text()) == json.loads((compact / "splits.json").read_text())
    assert cache_training.cache_bytes(dense) > 2 * cache_training.cache_bytes(compact)
    a, b = (SliceDataset(c, None, ["t1ce", "flair"]) for c in (compact, dense))
    assert len(a) == len(b)
    for i in range(0, len(a), 5):
        assert a[i]["subject"] == b[i]["subject"]
        assert float((a[i]["image"] - b[i]["image"]).abs().max()) <= 0.5 / 65535 + 1e-9
        assert np.array_equal(a[i]["mask"].numpy(), b[i]["mask"].numpy())
