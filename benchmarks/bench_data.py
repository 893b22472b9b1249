#!/usr/bin/env python
"""Timing of the data pipeline on synthetic phantoms: generation, cache building, slice reading.

In one process, in a temporary directory:

    generate   ``mmcam.data.synthetic.generate_synthetic``: phantoms written as NIfTI (s / subject)
    prepare    ``build_cache`` with 1 worker and with ``--workers`` workers (s / subject, speed-up)
    read       items per second of ``SliceDataset`` (memory-mapped cache) against a baseline that
               reads each slice straight from the NIfTI files (nibabel proxy slicing, one call per
               modality and the mask) -- the reason the cache exists
    loader     slices per second through a DataLoader (batch 16, shuffled) with 0 and
               ``--workers`` worker processes (spawn)

Each number is the median of ``--repeats`` runs. The machine is shared and noisy: compare ratios.

Usage::

    python benchmarks/bench_data.py [--kind brats|prostate] [--subjects N] [--workers K]
                                    [--repeats R] [--json OUT]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

import mmcam
from mmcam.data import SliceDataset, build_cache, discover
from mmcam.data._atomic import atomic_write_json
from mmcam.data.synthetic import generate_synthetic


def median_time(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class NiftiSliceReader:
    """Baseline: item ``i`` read from the raw NIfTI files on every access (no cache)."""

    def __init__(self, dataset, items):
        self.subjects = {s.id: s for s in dataset.subjects}
        self.items = items  # (subject id, k)

    def __getitem__(self, i):
        subject_id, k = self.items[i]
        subject = self.subjects[subject_id]
        planes = []
        for source in subject.images:
            proxy = nib.load(source.path).dataobj
            index = (slice(None), slice(None), k) + (() if source.channel is None
                                                      else (source.channel,))
            planes.append(np.asarray(proxy[index], dtype=np.float32))
        mask = np.asarray(nib.load(subject.label).dataobj[:, :, k]) > 0
        return torch.from_numpy(np.stack(planes)), torch.from_numpy(mask)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kind", default="brats", choices=["brats", "prostate"])
    p.add_argument("--subjects", type=int, default=20)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--reads", type=int, default=200, help="random items per read measurement")
    p.add_argument("--json", default=None, help="write the results to this JSON file")
    a = p.parse_args()

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        counter = iter(range(10**6))

        def generate():
            generate_synthetic(tmp / f"raw{next(counter)}", a.kind, a.subjects, seed=0)

        t = median_time(generate, a.repeats)
        results["generate_s_per_subject"] = t / a.subjects
        print(f"generate  {a.subjects} {a.kind} subjects: {t:.2f} s ({t / a.subjects * 1e3:.0f} ms "
              f"/ subject)")

        dataset = discover(tmp / "raw0")
        for workers in sorted({1, a.workers}):
            def prepare():
                build_cache(dataset, tmp / f"cache{next(counter)}", workers=workers)
            t = median_time(prepare, a.repeats)
            results[f"prepare_s_per_subject_workers{workers}"] = t / a.subjects
            print(f"prepare   workers={workers}: {t:.2f} s ({t / a.subjects * 1e3:.0f} ms / subject)")
        if a.workers != 1:
            ratio = results["prepare_s_per_subject_workers1"] / \
                results[f"prepare_s_per_subject_workers{a.workers}"]
            results["prepare_speedup"] = ratio
            print(f"prepare   speed-up with {a.workers} workers: {ratio:.2f}x")

        build_cache(dataset, tmp / "cache", workers=a.workers)
        slices = SliceDataset(tmp / "cache")
        order = np.random.default_rng(0).permutation(len(slices))[: a.reads]
        baseline = NiftiSliceReader(dataset, [(slices[int(i)]["subject"], slices[int(i)]["slice"])
                                              for i in order])
        t_cache = median_time(lambda: [slices[int(i)] for i in order], a.repeats)
        t_nifti = median_time(lambda: [baseline[j] for j in range(len(order))], a.repeats)
        results["read_items_per_s_cache"] = len(order) / t_cache
        results["read_items_per_s_nifti"] = len(order) / t_nifti
        results["read_ratio_cache_over_nifti"] = t_nifti / t_cache
        print(f"read      cache {len(order) / t_cache:.0f} items/s, NIfTI {len(order) / t_nifti:.0f} "
              f"items/s: cache {t_nifti / t_cache:.1f}x faster")

        for workers in sorted({0, a.workers}):
            loader = torch.utils.data.DataLoader(
                slices, batch_size=16, shuffle=True, num_workers=workers,
                multiprocessing_context="spawn" if workers else None,
                persistent_workers=bool(workers), generator=torch.Generator().manual_seed(0))
            next(iter(loader))  # start the workers before timing

            def epoch():
                for _ in loader:
                    pass
            t = median_time(epoch, a.repeats)
            results[f"loader_slices_per_s_workers{workers}"] = len(slices) / t
            print(f"loader    workers={workers}: {len(slices) / t:.0f} slices/s "
                  f"({len(slices)} slices of {tuple(slices[0]['image'].shape)})")

    if a.json:
        payload = {
            "benchmark": "bench_data", "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "machine": {"platform": platform.platform(), "processor": platform.processor(),
                        "cpus": os.cpu_count(), "python": sys.version.split()[0],
                        "torch": torch.__version__, "nibabel": nib.__version__,
                        "mmcam": mmcam.__version__},
            "args": vars(a), "results": results,
        }
        atomic_write_json(a.json, payload)
        print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
