"""The run directory of a training run: resolved config, environment, text log, metrics and checkpoints.

Layout::

    RUN_DIR/config.yaml      the resolved configuration (what --resume checks against)
    RUN_DIR/environment.json package versions, build information, seed, command line
    RUN_DIR/train.log        the text log
    RUN_DIR/metrics.csv      step, epoch, split, name, value (one row per scalar)
    RUN_DIR/metrics.jsonl    one JSON record per logging call
    RUN_DIR/tensorboard/     TensorBoard scalars (when tensorboard is installed)
    RUN_DIR/last.pt, best.pt, best_dice.pt, results.json

Only the main process (rank 0) writes.
"""

from __future__ import annotations

import csv
import importlib.metadata
import json
import platform
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml

import mmcam
from mmcam.atomic_files import atomic_write_text

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("mmcam", "torch", "kornia", "numpy", "nibabel", "tqdm", "pyyaml", "tensorboard"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


class RunDirectory:
    """Writes a run's files (see the module docstring); a no-op logger on non-main ranks."""

    def __init__(self, path: str | Path, *, is_main: bool = True):
        self.path = Path(path)
        self.is_main = is_main
        self._tensorboard: SummaryWriter | Literal[False] | None = None  # False: tensorboard is not installed
        if is_main:
            self.path.mkdir(parents=True, exist_ok=True)

    @property
    def config_file(self) -> Path:
        return self.path / "config.yaml"

    def checkpoint(self, name: str) -> Path:
        return self.path / f"{name}.pt"

    def write_config(self, config: dict[str, Any], seed: int) -> None:
        if not self.is_main:
            return
        atomic_write_text(self.config_file, yaml.safe_dump(config, sort_keys=True))
        build = mmcam.build_info()
        build.pop("parallel_backend", None)
        env = {
            "versions": package_versions(),
            "build": build,
            "seed": seed,
            "argv": sys.argv,
            "platform": platform.platform(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        atomic_write_text(self.path / "environment.json", json.dumps(env, indent=2, default=str))

    def read_config(self) -> dict[str, Any]:
        if not self.config_file.is_file():
            raise FileNotFoundError(f"{self.path} is not a run directory (no config.yaml)")
        return yaml.safe_load(self.config_file.read_text())

    def log(self, message: str) -> None:
        if not self.is_main:
            return
        line = f"[{time.strftime('%H:%M:%S')}] {message}"
        print(line, flush=True)
        with open(self.path / "train.log", "a") as f:
            f.write(line + "\n")

    def scalars(self, split: str, step: int, epoch: int, values: dict[str, float]) -> None:
        if not self.is_main or not values:
            return
        csv_path = self.path / "metrics.csv"
        new = not csv_path.exists()
        with open(csv_path, "a", newline="") as f:
            writer = csv.writer(f)
            if new:
                writer.writerow(["step", "epoch", "split", "name", "value"])
            for name, value in values.items():
                writer.writerow([step, epoch, split, name, value])
        with open(self.path / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": step, "epoch": epoch, "split": split, **values}) + "\n")
        tensorboard = self._tensorboard_writer()
        if tensorboard is not None:
            for name, value in values.items():
                tensorboard.add_scalar(f"{split}/{name}", value, step)
            tensorboard.flush()

    def _tensorboard_writer(self) -> SummaryWriter | None:
        if self._tensorboard is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                self._tensorboard = False
            else:
                self._tensorboard = SummaryWriter(str(self.path / "tensorboard"))
        return self._tensorboard or None

    def write_results(self, results: dict[str, Any]) -> None:
        if self.is_main:
            atomic_write_text(self.path / "results.json", json.dumps(results, indent=2))
