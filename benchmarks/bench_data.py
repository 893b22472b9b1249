#!/usr/bin/env python
"""Timing of the data pipeline on synthetic phantoms: generation, cache building, slice reading, and
how it compares with what a CPU training step consumes.

In one process, in a temporary directory:

    generate   ``mmcam.data.synthetic.generate_synthetic``: phantoms written as NIfTI (s / subject)
    prepare    ``build_cache`` (what ``python -m mmcam.prepare`` runs: read, check, normalise,
               slice, write) with 1 worker and with ``--workers`` workers, in volumes per second
               (one volume = one modality of one subject) and the speed-up
    read       items per second of ``SliceDataset`` (memory-mapped cache) against a baseline that
               reads each slice straight from the NIfTI files (nibabel proxy slicing, one call per
               modality and the mask) -- the reason the cache exists
    compact    bytes per subject and read items per second of the default cache (uint16, each
               subject's foreground box) side by side with a float32 whole-plane cache (the format
               before cache version 3), same items in the same order
    loader     slices per second through a DataLoader (batch 16, shuffled) with 0 and
               ``--workers`` worker processes (spawn)
    train      slices per second one CPU training step consumes (``mmcam.training.trainer``, batch 16), when
               training is installed; otherwise reported as not available

The summary line puts prepare, loader and training rates side by side: the loader must deliver more
slices per second than training consumes. Worker processes are spawned (each imports torch, about a
second or two), so on a few small phantoms the pool's start-up outweighs the parallel work; the
speed-up shows on real volumes. Each number is the median of ``--repeats`` runs. The machine
is shared and noisy: compare ratios.

Usage::

    python benchmarks/bench_data.py [--layout brats|prostate] [--subjects N] [--workers K]
                                    [--repeats R] [--shape X Y Z] [--json OUT]
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
from mmcam.atomic_files import atomic_write_json
from mmcam.data import BuildOptions, SliceDataset, build_cache, discover, write_splits
from mmcam.data.cache import subject_dir
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
            index = (slice(None), slice(None), k) + (() if source.channel is None else (source.channel,))
            planes.append(np.asarray(proxy[index], dtype=np.float32))
        mask = np.asarray(nib.load(subject.label).dataobj[:, :, k]) > 0
        return torch.from_numpy(np.stack(planes)), torch.from_numpy(mask)


def slices_shape(dataset):
    """(X, Y, Z) of the first subject's first image."""
    source = dataset.subjects[0].images[0]
    return nib.load(source.path).shape[:3]


def bytes_per_subject(cache) -> float:
    """Mean bytes of a cache's subject folders (arrays and meta.json)."""
    folders = [subject_dir(cache, p.name) for p in (Path(cache) / "subjects").iterdir()]
    return statistics.mean(sum(f.stat().st_size for f in d.iterdir()) for d in folders)


def compare_storage(raw_dataset, tmp: Path, order, repeats: int, results: dict) -> None:
    """Bytes per subject and read items/s: the default cache against float32 whole planes (``results``)."""
    caches = {"compact": tmp / "cache", "float32_full": tmp / "cache_float32_full"}
    build_cache(raw_dataset, caches["float32_full"], options=BuildOptions("float32", crop_to_foreground=False))
    rates = {}
    for name, cache in caches.items():
        dataset = SliceDataset(cache)
        rates[name] = len(order) / median_time(lambda: [dataset[int(i)] for i in order], repeats)
        results[f"bytes_per_subject_{name}"] = bytes_per_subject(cache)
        results[f"read_items_per_s_{name}"] = rates[name]
    size_ratio = results["bytes_per_subject_compact"] / results["bytes_per_subject_float32_full"]
    results["compact_bytes_ratio"] = size_ratio
    results["compact_read_speed_ratio"] = rates["compact"] / rates["float32_full"]
    print(
        f"compact   {results['bytes_per_subject_compact'] / 1e6:.2f} MB/subject vs float32 whole planes "
        f"{results['bytes_per_subject_float32_full'] / 1e6:.2f} MB ({size_ratio:.3f}x); read "
        f"{rates['compact']:.0f} vs {rates['float32_full']:.0f} items/s "
        f"({rates['compact'] / rates['float32_full']:.2f}x)"
    )


def training_consumption(cache, repeats: int, batch_size: int = 16):
    """Slices per second one CPU training step consumes, or ``(None, reason)`` without training.

    Uses :class:`mmcam.training.trainer.Trainer` (the paper's BraTS network widths divided by 4, the full loss)
    on batches already in memory, so only the step itself is timed.
    """
    try:
        from mmcam.training.config import TrainConfig
        from mmcam.training.run_dir import RunDirectory
        from mmcam.training.trainer import Trainer
    except ImportError as exc:
        return None, f"training not available: {exc}"
    try:
        with tempfile.TemporaryDirectory() as run:
            config = TrainConfig(batch_size=batch_size, width_divisor=4, max_steps=1)
            trainer = Trainer(config, cache, RunDirectory(run))
            batch = next(
                iter(
                    torch.utils.data.DataLoader(trainer.train_set, batch_size=batch_size, shuffle=True, drop_last=True)
                )
            )
            trainer._step(batch)  # warm-up
            t = median_time(lambda: trainer._step(batch), repeats)
    except Exception as exc:  # noqa: BLE001 -- an API in flux must not break the data benchmark
        return None, f"training step failed: {type(exc).__name__}: {exc}"
    return batch_size / t, ""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layout", default="brats", choices=["brats", "prostate"])
    p.add_argument("--subjects", type=int, default=20)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--reads", type=int, default=200, help="random items per read measurement")
    p.add_argument("--shape", type=int, nargs=3, default=None, metavar=("X", "Y", "Z"), help="phantom shape")
    p.add_argument("--json", default=None, help="write the results to this JSON file")
    a = p.parse_args()

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        counter = iter(range(10**6))

        def generate():
            generate_synthetic(tmp / f"raw{next(counter)}", a.layout, a.subjects, seed=0, shape=a.shape)

        t = median_time(generate, a.repeats)
        results["generate_s_per_subject"] = t / a.subjects
        print(f"generate  {a.subjects} {a.layout} subjects: {t:.2f} s ({t / a.subjects * 1e3:.0f} ms / subject)")

        dataset = discover(tmp / "raw0")
        volumes = a.subjects * len(dataset.modalities)
        for workers in sorted({1, a.workers}):

            def prepare():
                build_cache(dataset, tmp / f"cache{next(counter)}", workers=workers)

            t = median_time(prepare, a.repeats)
            results[f"prepare_volumes_per_s_workers{workers}"] = volumes / t
            print(
                f"prepare   workers={workers}: {t:.2f} s, {volumes / t:.1f} volumes/s "
                f"({volumes} volumes of {dataset.subjects[0].images[0].path.name.split('.')[0]} "
                f"shape {tuple(slices_shape(dataset))})"
            )
        if a.workers != 1:
            ratio = results[f"prepare_volumes_per_s_workers{a.workers}"] / results["prepare_volumes_per_s_workers1"]
            results["prepare_speedup"] = ratio
            print(f"prepare   speed-up with {a.workers} workers: {ratio:.2f}x")

        build_cache(dataset, tmp / "cache", workers=a.workers)
        write_splits(tmp / "cache", seed=0)
        slices = SliceDataset(tmp / "cache")
        order = np.random.default_rng(0).permutation(len(slices))[: a.reads]
        baseline = NiftiSliceReader(dataset, [(slices[int(i)]["subject"], slices[int(i)]["slice"]) for i in order])
        t_cache = median_time(lambda: [slices[int(i)] for i in order], a.repeats)
        t_nifti = median_time(lambda: [baseline[j] for j in range(len(order))], a.repeats)
        results["read_items_per_s_cache"] = len(order) / t_cache
        results["read_items_per_s_nifti"] = len(order) / t_nifti
        results["read_ratio_cache_over_nifti"] = t_nifti / t_cache
        print(
            f"read      cache {len(order) / t_cache:.0f} items/s, NIfTI {len(order) / t_nifti:.0f} "
            f"items/s: cache {t_nifti / t_cache:.1f}x faster"
        )
        compare_storage(dataset, tmp, order, a.repeats, results)

        for workers in sorted({0, a.workers}):
            loader = torch.utils.data.DataLoader(
                slices,
                batch_size=16,
                shuffle=True,
                num_workers=workers,
                multiprocessing_context="spawn" if workers else None,
                persistent_workers=bool(workers),
                generator=torch.Generator().manual_seed(0),
            )
            next(iter(loader))  # start the workers before timing

            def epoch():
                for _ in loader:
                    pass

            t = median_time(epoch, a.repeats)
            results[f"loader_slices_per_s_workers{workers}"] = len(slices) / t
            print(
                f"loader    workers={workers}: {len(slices) / t:.0f} slices/s "
                f"({len(slices)} slices of {tuple(slices[0]['image'].shape)})"
            )

        train_rate, reason = training_consumption(tmp / "cache", a.repeats)
        results["train_slices_per_s"] = train_rate
        print(
            f"train     {f'{train_rate:.0f} slices/s' if train_rate else 'n/a'}{'' if train_rate else f' ({reason})'}"
        )
        loader_rate = results[f"loader_slices_per_s_workers{a.workers}"]
        prepare_rates = ", ".join(
            f"{results[f'prepare_volumes_per_s_workers{w}']:.1f} ({w} workers)" for w in sorted({1, a.workers})
        )
        print(
            f"summary   prepare {prepare_rates} volumes/s"
            f" | loader {loader_rate:.0f} slices/s ({a.workers} workers) | training consumes "
            + (f"{train_rate:.0f} slices/s: loader {loader_rate / train_rate:.1f}x faster" if train_rate else "n/a")
        )

    if a.json:
        payload = {
            "benchmark": "bench_data",
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "machine": {
                "platform": platform.platform(),
                "processor": platform.processor(),
                "cpus": os.cpu_count(),
                "python": sys.version.split()[0],
                "torch": torch.__version__,
                "nibabel": nib.__version__,
                "mmcam": mmcam.__version__,
            },
            "args": vars(a),
            "results": results,
        }
        atomic_write_json(a.json, payload)
        print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
