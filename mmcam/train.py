"""``python -m mmcam.train``: train the cross-modality equivariant CAM method (docs/method.md).

With no arguments it trains a CPU-sized model on the built-in synthetic phantoms (generated on first
use and cached under ``$MMCAM_HOME``, default ``~/.cache/mmcam``), evaluates it on their test split and
prints the Dice. On real data::

    python -m mmcam.train --data /data/BraTS2021_Training_Data --dataset brats --modalities t2,flair \\
        --preset paper-brats [--config cfg.yaml] [key=value ...]

``--data`` may be a raw download (prepared into a cache on first use) or a cache made by
``python -m mmcam.prepare``. ``--resume RUN_DIR`` continues a run from its ``last`` checkpoint.
Under ``torchrun --nproc_per_node K`` the run is distributed (DDP; gloo on CPU, nccl on GPU).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from mmcam import losses, transforms
from mmcam.data import DataError
from mmcam.training import config as cfg
from mmcam.training.cache_location import resolve_cache

if TYPE_CHECKING:
    from mmcam.training.trainer import Distributed


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m mmcam.train",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. lr=1e-4 use_kd=false")
    p.add_argument("--data", help="raw dataset folder or prepared cache (default: synthetic phantoms)")
    p.add_argument("--dataset", help="brats | prostate | auto (or a specific layout, see mmcam.prepare)")
    p.add_argument("--modalities", help="comma-separated modalities, one network each (default: all)")
    p.add_argument("--preset", choices=sorted(cfg.PRESETS), help="paper hyperparameters or the CPU quick start")
    p.add_argument("--config", metavar="YAML", help="a YAML file of config keys")
    p.add_argument("--run-dir", help="run directory (default: runs/<timestamp>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    p.add_argument("--device", choices=cfg.DEVICES)
    p.add_argument("--amp", choices=cfg.AMP_MODES, help="mixed precision: bf16 (CPU or CUDA) or fp16 (CUDA)")
    p.add_argument("--channels-last", action="store_true", default=None)
    p.add_argument("--deterministic", action="store_true", default=None)
    p.add_argument("--seed", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--max-steps", type=int)
    p.add_argument("--limit-subjects", type=int, help="train on the first K training subjects (smoke runs)")
    p.add_argument("--workers", type=int, help="DataLoader worker processes")
    p.add_argument("--equivariance-backend", choices=losses.BACKENDS)
    p.add_argument("--transform", choices=transforms.POLICIES)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_intermixed_args(argv)


def cli_options(args: argparse.Namespace) -> dict:
    """The config keys set by command-line options (None = not given)."""
    return {
        "data": args.data,
        "dataset": args.dataset,
        "modalities": args.modalities,
        "device": args.device,
        "amp": args.amp,
        "channels_last": args.channels_last,
        "deterministic": args.deterministic,
        "seed": args.seed,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "max_steps": args.max_steps,
        "limit_subjects": args.limit_subjects,
        "workers": args.workers,
        "equivariance_backend": args.equivariance_backend,
        "transform": args.transform,
    }


def new_run_dir(args: argparse.Namespace) -> Path:
    return Path(args.run_dir) if args.run_dir else Path("runs") / time.strftime("%Y%m%d-%H%M%S")


def resolved_config(args: argparse.Namespace) -> tuple[cfg.TrainConfig, Path]:
    """The configuration and run directory, for a new run or a resumed one (checked against the saved
    config: only resumable keys such as max_steps may differ)."""
    options = cli_options(args)
    if args.resume is None:
        return cfg.resolve(
            preset_name=args.preset, config_file=args.config, options=options, overrides=args.overrides
        ), new_run_dir(args)
    from mmcam.training.run_dir import RunDirectory

    run_dir = Path(args.resume)
    saved = cfg.apply(cfg.TrainConfig(), RunDirectory(run_dir, is_main=False).read_config(), f"{run_dir}/config.yaml")
    given = {k: v for k, v in options.items() if v is not None}
    if args.config:
        given.update(cfg.load_yaml(args.config))
    given.update(cfg.parse_overrides(args.overrides))
    if args.preset:
        given.update(cfg.preset(args.preset))
    resumed = cfg.apply(saved, given, "the resume command line")
    changed = cfg.differences(saved.to_dict(), resumed.to_dict())
    if changed:
        detail = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
        raise cfg.ConfigError(
            f"--resume {run_dir}: the run was made with a different config ({detail}); "
            f"only {', '.join(sorted(cfg.RESUMABLE_KEYS))} may change when resuming"
        )
    return resumed, run_dir


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config, run_path = resolved_config(args)
    except (cfg.ConfigError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    import torch

    from mmcam.training.run_lock import RunDirectoryBusy, RunLock
    from mmcam.training.trainer import Distributed

    if config.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA device is available", file=sys.stderr)
        return 2
    distributed = Distributed.from_environment(config.device)
    lock = RunLock(run_path)
    if distributed.is_main:  # one training process per run directory, before anything is written there
        try:
            lock.acquire()
            if args.resume is None and (run_path / "config.yaml").is_file():
                lock.release()
                raise RunDirectoryBusy(
                    f"--run-dir {run_path} already holds a run; continue it with --resume {run_path}, or "
                    "choose a new --run-dir"
                )
        except RunDirectoryBusy as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    try:
        return _train(args, config, run_path, distributed)
    finally:
        lock.release()


def _cpu_has_bf16() -> bool | None:
    """Whether oneDNN runs bfloat16 natively on this CPU (None where this torch cannot tell)."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return None


def _train(args: argparse.Namespace, config: cfg.TrainConfig, run_path: Path, distributed: Distributed) -> int:
    """Prepare, train, evaluate; the exit status."""
    import torch

    from mmcam.training.run_dir import RunDirectory
    from mmcam.training.trainer import NonFiniteLoss, StopRequested, Trainer

    run_dir = RunDirectory(run_path, is_main=distributed.is_main)
    run_dir.log(f"run directory: {run_path}")
    try:
        cache = resolve_cache(config, run_dir.log)
        trainer = Trainer(config, cache, run_dir, distributed)
        if trainer.steps_per_epoch() == 0:
            raise DataError(
                f"the training split of {cache} has {len(trainer.train_set)} slices, fewer than one "
                f"batch of {config.batch_size * distributed.world}"
            )
    except (DataError, cfg.ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.resume is not None:
        try:
            trainer.resume(run_dir.checkpoint("last"))
        except ValueError as exc:  # CheckpointError: missing, truncated, corrupt or unsafe; or another run's
            print(
                f"error: --resume {run_path}: {exc}; restore {run_dir.checkpoint('last')} from a copy, or "
                "train again into a new --run-dir",
                file=sys.stderr,
            )
            return 2
        run_dir.log(f"resumed at step {trainer.state.step} (epoch {trainer.state.epoch})")
    else:
        run_dir.write_config(config.to_dict(), config.seed)
    run_dir.log(
        f"training {', '.join(trainer.modalities)} on {cache}: {len(trainer.train_set)} slices, "
        f"{trainer.total_steps()} steps, backend {config.equivariance_backend}"
    )
    if config.amp == "bf16" and config.device == "cpu" and _cpu_has_bf16() is False:
        run_dir.log(
            "warning: --amp bf16 on a CPU without bfloat16 instructions (AVX512-BF16 or AMX): oneDNN emulates "
            "them, so this run is likely slower than float32 (leave --amp out)"
        )
    try:
        trainer.fit(progress=not args.no_progress)
        if distributed.is_main:  # the test evaluation (python -m mmcam.evaluate's protocol) runs once
            results = trainer.evaluate()
            results["run_dir"] = str(run_path)
            run_dir.write_results(results)
            run_dir.log(
                "test Dice (per patient, 3-D, original voxel grid, threshold chosen on validation): "
                + ", ".join(f"{name} {r['mean']:.3f} ± {r['std']:.3f}" for name, r in results["dice"].items())
                + f"; results in {run_path / 'results.json'}"
            )
    except StopRequested as stop:
        run_dir.log(f"{stop}: saved {run_dir.checkpoint('last')}; continue with --resume {run_path}")
        return 128 + stop.signum
    except NonFiniteLoss as exc:
        print(
            f"error: {exc}; that step was not trained on and {run_dir.checkpoint('last')} is the last good "
            "state (check the data for corrupt slices; with --amp fp16 try bf16)",
            file=sys.stderr,
        )
        return 1
    except OSError as exc:  # a full disk, a file-size limit, a quota: every checkpoint is written atomically
        print(
            f"error: writing to {run_path} failed ({exc}); the checkpoints already there are intact: free space "
            f"and continue with --resume {run_path}",
            file=sys.stderr,
        )
        return 1
    if distributed.world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
