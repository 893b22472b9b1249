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
#: The same iteration as "fused" with the network and its input in channels_last memory format (what
#: would cut the network's share on a CPU, where oneDNN's convolutions prefer it), and under bfloat16
#: autocast (``--amp bf16``; fast where the CPU has bfloat16 instructions, AVX512-BF16 or AMX).
CHANNELS_LAST = "fused, channels_last"
BF16 = "fused, bf16 autocast"
CHANNELS_LAST_BF16 = "fused, channels_last + bf16"
NETWORK_VARIANTS = {  # name: (channels_last, bf16 autocast), each the "fused" objective
    CHANNELS_LAST: (True, False),
    BF16: (False, True),
    CHANNELS_LAST_BF16: (True, True),
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
    variants = {**VARIANTS, **{name: VARIANTS["fused"] for name in NETWORK_VARIANTS}}
    setups = {}
    for name, kwargs in variants.items():
        torch.manual_seed(0)
        model = MultiModalCAM(names, width_divisor=args.width_divisor).to(device)
        inputs = images
        channels_last, bf16 = NETWORK_VARIANTS.get(name, (False, False))
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
            inputs = images.contiguous(memory_format=torch.channels_last)
        setups[name] = (
            model,
            inputs,
            torch.optim.AdamW(model.parameters(), lr=1e-4),
            ObjectiveConfig(transform=args.transform, **kwargs),
            torch.Generator().manual_seed(1),
            bf16,
        )

    def iteration(name: str) -> float:
        model, inputs, optimizer, config, generator, bf16 = setups[name]
        synchronize(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            result = compute_objective(model, inputs, labels, generator, config)
        optimizer.zero_grad(set_to_none=True)
        result.total.backward()
        optimizer.step()
        synchronize(device)
        return time.perf_counter() - start

    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.warmup):
        for name in variants:
            iteration(name)
    for _ in range(args.repeats):
        for name in variants:
            times[name].append(iteration(name))
    median = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    base = median["no equivariance"]
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(
        f"device {device_name}, threads {torch.get_num_threads()}, N={args.batch}, M={args.modalities}, "
        f"{args.size}x{args.size}, width/{args.width_divisor}, transform {args.transform}"
    )
    print(f"{'backend':<28}{'iteration ms':>14}{'equivariance ms':>17}{'share':>8}{'vs fused':>10}")
    rows = []
    for name in variants:
        # the equivariance part: the difference to "no equivariance" (same network layout and precision);
        # the network variants have no such baseline here, so only their iteration times are reported
        eq = None if name in NETWORK_VARIANTS else 0.0 if name == "no equivariance" else median[name] - base
        share = None if eq is None else eq / median[name]
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
        eq_text = "-" if eq is None else f"{eq:.1f}"
        share_text = "-" if share is None else f"{share:.0%}"
        print(f"{name:<28}{median[name]:>14.1f}{eq_text:>17}{share_text:>8}{ratio:>9.2f}x")
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
