#!/usr/bin/env python
"""Time of one training iteration (forward of both views, loss, backward, AdamW step) per equivariance
backend, and the share of the iteration spent in the equivariance part (docs/benchmarks.md).

The equivariance share is measured as the difference to the same iteration with ER and CMER switched
off (classification + KD only), so it includes the warp, normalisation, distances and their backward.
Backends run interleaved round-robin in one process; numbers are medians over repeats after warm-up.

Usage::

    python benchmarks/bench_train.py [--threads K] [--batch 16] [--size 96] [--width-divisor 8]
                                     [--modalities 2] [--repeats 7] [--device cpu|cuda] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from mmcam.models import MultiModalCAM
from mmcam.objective import ObjectiveConfig, compute_objective

VARIANTS = {  # name: ObjectiveConfig keyword arguments
    "fused": dict(equivariance_backend="fused"),
    "torch": dict(equivariance_backend="torch"),
    "kornia": dict(equivariance_backend="kornia"),
    "no equivariance": dict(equivariance_backend="fused", use_er=False, use_cmer=False),
}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--width-divisor", type=int, default=8)
    p.add_argument("--modalities", type=int, default=2)
    p.add_argument("--transform", default="all")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", help="write the results to this file")
    return p.parse_args()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    names = [f"m{m}" for m in range(args.modalities)]
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch, args.modalities, args.size, args.size, generator=gen).to(device)
    labels = (torch.rand(args.batch, generator=gen) < 0.5).long().to(device)
    setups = {}
    for name, kwargs in VARIANTS.items():
        torch.manual_seed(0)
        model = MultiModalCAM(names, width_divisor=args.width_divisor).to(device)
        setups[name] = (
            model,
            torch.optim.AdamW(model.parameters(), lr=1e-4),
            ObjectiveConfig(transform=args.transform, **kwargs),
            torch.Generator().manual_seed(1),
        )

    def iteration(name: str) -> float:
        model, optimizer, config, generator = setups[name]
        synchronize(device)
        start = time.perf_counter()
        result = compute_objective(model, images, labels, generator, config)
        optimizer.zero_grad(set_to_none=True)
        result.total.backward()
        optimizer.step()
        synchronize(device)
        return time.perf_counter() - start

    times = {name: [] for name in VARIANTS}
    for _ in range(args.warmup):
        for name in VARIANTS:
            iteration(name)
    for _ in range(args.repeats):
        for name in VARIANTS:
            times[name].append(iteration(name))
    median = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    base = median["no equivariance"]
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(
        f"device {device_name}, threads {torch.get_num_threads()}, N={args.batch}, M={args.modalities}, "
        f"{args.size}x{args.size}, width/{args.width_divisor}, transform {args.transform}"
    )
    print(f"{'backend':<16}{'iteration ms':>14}{'equivariance ms':>17}{'share':>8}{'vs fused':>10}")
    rows = []
    for name in VARIANTS:
        eq = median[name] - base if name != "no equivariance" else 0.0
        share = eq / median[name] if median[name] > 0 else 0.0
        ratio = median[name] / median["fused"]
        rows.append(
            {
                "backend": name,
                "iteration_ms": median[name],
                "equivariance_ms": eq,
                "share": share,
                "ratio_to_fused": ratio,
            }
        )
        print(f"{name:<16}{median[name]:>14.1f}{eq:>17.1f}{share:>8.0%}{ratio:>9.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "device": device_name,
                    "threads": torch.get_num_threads(),
                    "args": vars(args),
                    "torch": torch.__version__,
                    "results": rows,
                },
                f,
                indent=2,
            )


if __name__ == "__main__":
    main()
