"""``CACHE/manifest.json``: one file describing every subject and every stored slice of a cache.

Everything needed to put predictions back into the original grid without opening the per-subject
folders. Written by :func:`mmcam.data.build.build_cache` after all subjects (before the index), as
compact JSON::

    {"format": "mmcam-manifest", "version": 1,
     "dataset": "brats2021", "label_spec": "brats2021", "default_region": "WT",
     "modalities": ["t1", "t1ce", "t2", "flair"],
     "subjects": [
       {"subject": "BraTS2021_00000",
        "labeled": true,                  # false: no mask, inference only ("labels" is null)
        "shape": [240, 240, 155],         # (X, Y, Z) of the source volumes
        "spacing": [1.0, 1.0, 1.0],       # mm, from the header
        "affine": [[...4 x 4...]],        # voxel -> world (mm) of the source volumes
        "crop": {"shape": [X, Y], "box": [x0, y0, x1, y1], "size": [H, W],
                 "scale": [sx, sy], "padding": [[before, after], [before, after]]},
                                          # mmcam.data.geometry.InPlaneGeometry
        "stored_affine": [[...]],         # voxel -> world of the stored (H, W) grid
        "storage": {"dtype": "uint16", "scale": 1 / 65535, "size": [H, W], "box": [r0, c0, r1, c1]},
                                          # mmcam.data.cache.Storage: the part of the (H, W) planes
                                          # written to image.npy / labels.npy, and its dtype
        "slices": [k0, k1, ...],          # third-axis index k of each stored slice (row r = slices[r])
        "labels": {"WT": [0, 1, ...], "TC": [...], "ET": [...]}}   # slice label per region, per row
     ]}

So stored slice ``r`` of a subject is ``(subject, slice=slices[r], label=labels[default_region][r])``.
Floats are written with Python's shortest round-trip repr, so affines read back bit for bit.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from mmcam.atomic_files import atomic_write
from mmcam.data.errors import DataError

__all__ = ["MANIFEST_FILE", "MANIFEST_FORMAT", "manifest_record", "write_manifest", "read_manifest"]

MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "mmcam-manifest"
MANIFEST_VERSION = 1


def _subject_record(meta) -> dict:
    return {
        "subject": meta.id,
        "labeled": meta.labeled,
        "shape": list(meta.shape),
        "spacing": list(meta.zooms),
        "affine": meta.affine.tolist(),
        "crop": meta.geometry.to_json(),
        "stored_affine": meta.stored_affine.tolist(),
        "storage": meta.storage.to_json(),
        "slices": meta.slice_index.tolist(),
        "labels": {r: v.tolist() for r, v in meta.slice_labels.items()} if meta.labeled else None,
    }


def manifest_record(index, metas: Iterable) -> dict:
    """The manifest of a cache: ``index`` a :class:`~mmcam.data.cache.CacheIndex`, ``metas`` its
    :class:`~mmcam.data.cache.SubjectMeta` records in cache order."""
    from mmcam.data.labels import get_label_spec

    return {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "dataset": index.dataset,
        "label_spec": index.label_spec,
        "default_region": get_label_spec(index.label_spec).default_region,
        "modalities": list(index.modalities),
        "subjects": [_subject_record(m) for m in metas],
    }


def write_manifest(cache_dir, index, metas: Iterable) -> Path:
    """Write ``cache_dir/manifest.json`` atomically (one line per subject)."""
    record = manifest_record(index, metas)
    subjects = record.pop("subjects")
    head = json.dumps(record, separators=(",", ":"))[:-1]
    lines = ",\n".join(json.dumps(s, separators=(",", ":")) for s in subjects)
    text = f'{head},"subjects":[\n{lines}\n]}}\n'
    return atomic_write(Path(cache_dir) / MANIFEST_FILE, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def read_manifest(cache_dir) -> dict:
    """Read and check ``cache_dir/manifest.json`` (the dict described in the module docstring)."""
    path = Path(cache_dir) / MANIFEST_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: missing manifest; build the cache with python -m mmcam.prepare") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot read the manifest ({exc})") from exc
    if record.get("format") != MANIFEST_FORMAT or record.get("version") != MANIFEST_VERSION:
        raise DataError(
            f"{path}: manifest format {record.get('format')!r} version "
            f"{record.get('version')!r}, expected {MANIFEST_FORMAT!r} version "
            f"{MANIFEST_VERSION}"
        )
    return record
