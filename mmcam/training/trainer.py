"""The training loop: data order, optimisation, validation, checkpoints and resumption (docs/method.md; README "Train").

Everything random is derived from the config's seed: model initialisation (the global torch RNG, seeded
before the model is built), the data order of epoch ``e`` (a generator seeded with ``(seed, e)``, so a
run resumed mid-epoch continues with the same batches) and the transforms π (a dedicated generator whose
state is checkpointed). A run of ``k`` steps, resumed for ``k`` more, ends with bitwise the weights of a
``2k``-step run on the CPU.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from mmcam.cams.pseudo_masks import foreground_maps
from mmcam.data import DataError, SliceDataset
from mmcam.evaluation.overlap import PatientDice, threshold_grid
from mmcam.evaluation.protocol import GRID_RULE, PSEUDO_MASK_RULE, evaluate_run
from mmcam.models import MultiModalCAM, unwrap_model
from mmcam.objective import ObjectiveResult, compute_objective
from mmcam.progress import progress_bar
from mmcam.training import checkpoint as ckpt
from mmcam.training.config import TrainConfig
from mmcam.training.run_dir import RunDirectory


@dataclass
class Distributed:
    """This process's place in a torchrun job (world 1: a plain run)."""

    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environment(cls, device: str) -> Distributed:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world == 1:
            return cls()
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device == "cuda" else "gloo")
        return cls(rank=dist.get_rank(), world=dist.get_world_size())


class EpochBatches(torch.utils.data.Sampler):
    """Batches of epoch ``epoch``: a permutation seeded by ``(seed, epoch)``, cut into global batches of
    ``batch_size * world`` items (the last incomplete one dropped), of which rank ``r`` takes the ``r``-th
    ``batch_size`` items; iteration starts at global batch ``start``."""

    def __init__(self, n: int, batch_size: int, seed: int, epoch: int, start: int = 0, rank: int = 0, world: int = 1):
        self.n, self.batch_size, self.seed, self.epoch = n, batch_size, seed, epoch
        self.start, self.rank, self.world = start, rank, world

    def __len__(self) -> int:
        return max(0, self.n // (self.batch_size * self.world) - self.start)

    def __iter__(self) -> Iterator[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n, generator=g).tolist()
        global_batch = self.batch_size * self.world
        for b in range(self.start, self.n // global_batch):
            chunk = order[b * global_batch : (b + 1) * global_batch]
            yield chunk[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]


@dataclass
class TrainState:
    """Progress counters (checkpointed)."""

    epoch: int = 0
    batch_in_epoch: int = 0
    step: int = 0
    best_accuracy: dict = field(default_factory=dict)  # modality -> best validation accuracy
    best_dice: float = -math.inf
    last_validated_step: int = -1
    skipped_steps: int = 0  # fp16: steps the grad scaler skipped (inf / NaN gradients)


class NonFiniteLoss(RuntimeError):
    """A step whose loss or gradient is not finite: it was not taken, and nothing was saved after it."""

    def __init__(self, step: int, what: str):
        super().__init__(f"step {step}: {what} is not finite (NaN or inf)")
        self.step, self.what = step, what


def _non_finite_term(result: ObjectiveResult) -> str:
    """The first term of ``L_i`` (``"<term>/<modality>"``) that is not finite, else ``"a gradient"``."""
    for term, values in result.terms.items():
        for modality, value in zip(result.modalities, values.detach().float().cpu().tolist()):
            if not math.isfinite(value):
                return f"the loss term {term}/{modality}"
    return "the loss" if not math.isfinite(float(result.total.detach())) else "a gradient"


class StopRequested(Exception):
    """SIGINT / SIGTERM arrived: the trainer saved ``last`` and stops."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _check_one_slice_size(cache_dir: Path, datasets: Sequence[SliceDataset]) -> None:
    """Batches need one in-plane size: a cache whose cases differ (e.g. MSD prostate at its native sizes)
    stops here with what to pass, never in the data loader's collate."""
    sizes = sorted({size for dataset in datasets for size in dataset.slice_sizes.values()})
    if len(sizes) > 1:
        listed = ", ".join(f"{h}x{w}" for h, w in sizes[:6]) + (", ..." if len(sizes) > 6 else "")
        raise DataError(
            f"{cache_dir}: the cases differ in in-plane size ({listed}) and a batch needs one size; train "
            "from the raw download with size=S (e.g. --preset paper-prostate: 256, fit=scale), or prepare "
            "the cache with python -m mmcam.prepare --size S"
        )


class Trainer:
    """Trains one :class:`~mmcam.models.MultiModalCAM` on a prepared cache.

    Args:
        config: the resolved configuration.
        cache_dir: the slice cache (``python -m mmcam.prepare``).
        run_dir: where logs and checkpoints go.
        distributed: rank and world size (see :meth:`Distributed.from_environment`).
    """

    def __init__(self, config: TrainConfig, cache_dir, run_dir: RunDirectory, distributed: Distributed | None = None):
        self.config, self.run_dir, self.dist = config, run_dir, distributed or Distributed()
        self.cache_dir = Path(cache_dir)
        self.device = torch.device(config.device)
        if config.deterministic:
            torch.use_deterministic_algorithms(True)
        fold = config.fold
        self.train_set = SliceDataset(cache_dir, "train", config.modalities, region=config.region, fold=fold)
        self.modalities = list(self.train_set.modalities)
        self.val_set = SliceDataset(cache_dir, "val", self.modalities, region=config.region, fold=fold)
        self.test_set = SliceDataset(cache_dir, "test", self.modalities, region=config.region)
        if config.limit_subjects is not None:
            self.train_set = SliceDataset(
                cache_dir, self.train_set.subject_ids[: config.limit_subjects], self.modalities, region=config.region
            )
        _check_one_slice_size(self.cache_dir, (self.train_set, self.val_set, self.test_set))
        torch.manual_seed(config.seed)
        # the bare MultiModalCAM, or it wrapped for DDP
        model: torch.nn.Module = MultiModalCAM(self.modalities, width_divisor=config.width_divisor).to(self.device)
        if config.channels_last:
            # nn.Module.to takes memory_format (see its docstring); torch's overloads of it leave it out
            model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        if self.dist.world > 1:
            # CUDA: batch statistics over the global batch. SyncBatchNorm has no CPU kernel, so CPU (gloo)
            # runs normalise each rank's shard separately. static_graph: every parameter is used by two
            # forward calls (original and transformed view) before the one backward.
            if self.device.type == "cuda":
                model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
            model = torch.nn.parallel.DistributedDataParallel(model, static_graph=True)
        self.model = model
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.objective = config.objective()
        self.transform_generator = torch.Generator().manual_seed(config.seed + 1)
        self.scaler = torch.amp.GradScaler("cuda") if config.amp == "fp16" else None
        self.state = TrainState()
        self.best_networks: dict[str, dict] = {}
        self._stop: int | None = None
        self._last_saved = time.monotonic()  # when last.pt was written (checkpoint_every_minutes)

    # ------------------------------------------------------------------ data
    def steps_per_epoch(self) -> int:
        return len(self.train_set) // (self.config.batch_size * self.dist.world)

    def total_steps(self) -> int:
        total = self.steps_per_epoch() * self.config.epochs
        return min(total, self.config.max_steps) if self.config.max_steps is not None else total

    def _loader(self, epoch: int, start: int) -> torch.utils.data.DataLoader:
        sampler = EpochBatches(
            len(self.train_set), self.config.batch_size, self.config.seed, epoch, start, self.dist.rank, self.dist.world
        )
        return torch.utils.data.DataLoader(
            self.train_set,
            batch_sampler=sampler,
            num_workers=self.config.workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        )

    # ------------------------------------------------------------ checkpoint
    def _checkpoint_state(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "modalities": self.modalities,
            "model": unwrap_model(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "state": dataclasses.asdict(self.state),
            "best_networks": self.best_networks,
            "rng": ckpt.capture_rng_state({"transform": self.transform_generator}),
        }

    def save(self, name: str) -> None:
        if self.dist.is_main:
            ckpt.atomic_save(self._checkpoint_state(), self.run_dir.checkpoint(name))
        if name == "last":
            self._last_saved = time.monotonic()

    def resume(self, path) -> None:
        saved = ckpt.load(path)
        if saved["modalities"] != self.modalities:
            raise ValueError(
                f"checkpoint {path} was trained on modalities {saved['modalities']}, not {self.modalities}"
            )
        unwrap_model(self.model).load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        if self.scaler is not None and saved["scaler"] is not None:
            self.scaler.load_state_dict(saved["scaler"])
        self.state = TrainState(**saved["state"])
        self.best_networks = saved["best_networks"]
        ckpt.restore_rng_state(saved["rng"], {"transform": self.transform_generator})

    # --------------------------------------------------------------- training
    def _request_stop(self, signum, _frame) -> None:
        self._stop = signum

    def _step(self, batch: dict) -> dict[str, float]:
        """One optimiser step; the scalars to log (empty off the logging steps).

        Raises:
            NonFiniteLoss: a loss term (any mode) or a gradient (fp32 / bf16) is NaN or inf; the step is not
                taken. Under fp16 the grad scaler skips a step whose gradients overflow; those are counted.
        """
        images = batch["image"].to(self.device, non_blocking=True)
        labels = batch["label"].to(self.device, non_blocking=True)
        if self.config.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        amp_dtypes: dict[str | None, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}
        amp_dtype = amp_dtypes.get(self.config.amp)
        with torch.autocast(self.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            result = compute_objective(self.model, images, labels, self.transform_generator, self.objective)
        self.optimizer.zero_grad(set_to_none=True)
        step = self.state.step + 1
        if self.scaler is not None:
            self.scaler.scale(result.total).backward()
            if not bool(torch.isfinite(result.total.detach())):
                raise NonFiniteLoss(step, _non_finite_term(result))
            scale = self.scaler.get_scale()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.scaler.get_scale() < scale:  # the scaler found inf / NaN gradients and skipped the step
                self.state.skipped_steps += 1
        else:
            result.total.backward()
            gradients = [p.grad for p in self.model.parameters() if p.grad is not None]
            norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(gradients)))
            if not bool(torch.isfinite(result.total.detach()) & torch.isfinite(norm)):  # one host sync
                raise NonFiniteLoss(step, _non_finite_term(result))
            self.optimizer.step()
        if self.state.step % self.config.log_every != 0:
            return {}
        scalars = result.scalars()
        if self.scaler is not None:
            scalars["skipped_steps"] = float(self.state.skipped_steps)
        return scalars

    def fit(self, progress: bool = True) -> None:
        """Train until ``epochs`` or ``max_steps``; validates and checkpoints at every epoch end."""
        handlers = {s: signal.signal(s, self._request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            self._fit(progress)
        finally:
            for s, h in handlers.items():
                signal.signal(s, h)

    def _fit(self, progress: bool) -> None:
        total = self.total_steps()
        bar = progress_bar(total, initial=self.state.step, enabled=progress and self.dist.is_main, unit="step")
        try:
            while self.state.step < total and self.state.epoch < self.config.epochs:
                self.model.train()
                for batch in self._loader(self.state.epoch, self.state.batch_in_epoch):
                    scalars = self._step(batch)
                    self.state.step += 1
                    self.state.batch_in_epoch += 1
                    bar.update(1)
                    if scalars:
                        bar.set_postfix(loss=f"{scalars['loss']:.3f}")
                        self.run_dir.scalars("train", self.state.step, self.state.epoch, scalars)
                    if self._validation_due():
                        self._select_best(self.state.epoch)
                    if self._checkpoint_due():
                        self.save("last")
                    if self._stop is not None:
                        self.save("last")
                        raise StopRequested(self._stop)
                    if self.state.step >= total:
                        break
                if self.state.batch_in_epoch >= self.steps_per_epoch():
                    self._end_epoch()
                elif self.state.step >= total and not self._validated_now():  # max_steps inside an epoch
                    self._select_best(self.state.epoch)
                self.save("last")
        finally:
            bar.close()

    def _end_epoch(self) -> None:
        epoch = self.state.epoch
        self.state.epoch += 1
        self.state.batch_in_epoch = 0
        per_epoch = self.config.val_every_steps is None and self.state.epoch % self.config.eval_every == 0
        if per_epoch or (self.state.epoch == self.config.epochs and not self._validated_now()):
            self._select_best(epoch)

    def _checkpoint_due(self) -> bool:
        """After a step: whether ``checkpoint_every_steps`` or ``checkpoint_every_minutes`` asks for last.pt."""
        every, minutes = self.config.checkpoint_every_steps, self.config.checkpoint_every_minutes
        if every is not None and self.state.step % every == 0:
            return True
        return minutes is not None and time.monotonic() - self._last_saved >= 60 * minutes

    def _validation_due(self) -> bool:
        """After a step: whether the step schedule (``val_every_steps``) validates now."""
        every = self.config.val_every_steps
        return every is not None and self.state.step % every == 0

    def _validated_now(self) -> bool:
        """Whether the model of the current step has been validated (by the step schedule)."""
        return self.state.last_validated_step == self.state.step

    def _select_best(self, epoch: int) -> None:
        """Validate; keep each modality's network of best validation accuracy (``best``, the paper's
        selection) and, with ``dice_selection``, the model of best validation Dice (``best_dice``). Uses no
        random state."""
        self.state.last_validated_step = self.state.step
        summary = self.validate(self.val_set)
        self.run_dir.scalars("val", self.state.step, epoch, summary["scalars"])
        self.run_dir.log(
            f"step {self.state.step} (epoch {epoch}): "
            + ", ".join(f"{k} {v:.3f}" for k, v in summary["scalars"].items())
        )
        model = unwrap_model(self.model)
        for m, name in enumerate(self.modalities):  # best network per modality, as in the paper
            accuracy = summary["accuracy"][m]
            if accuracy > self.state.best_accuracy.get(name, -math.inf):
                self.state.best_accuracy[name] = accuracy
                self.best_networks[name] = {k: v.detach().clone() for k, v in model.network(name).state_dict().items()}
        if self.dist.is_main:
            best = model.state_dict()
            for name, weights in self.best_networks.items():
                best.update({f"networks.{name}.{k}": v for k, v in weights.items()})
            ckpt.atomic_save(
                {
                    "model": best,
                    "modalities": self.modalities,
                    "config": self.config.to_dict(),
                    "best_accuracy": dict(self.state.best_accuracy),
                },
                self.run_dir.checkpoint("best"),
            )
            if self.config.dice_selection and summary["dice"] is not None and summary["dice"] > self.state.best_dice:
                self.state.best_dice = summary["dice"]
                ckpt.atomic_save(
                    {
                        "model": model.state_dict(),
                        "modalities": self.modalities,
                        "config": self.config.to_dict(),
                        "dice": summary["dice"],
                    },
                    self.run_dir.checkpoint("best_dice"),
                )

    # ------------------------------------------------------------ evaluation
    @torch.no_grad()
    def predict(self, dataset: SliceDataset, model: torch.nn.Module | None = None, thresholds=None):
        """Accuracy per modality and per-patient Dice accumulators (each modality, and "combined" = the
        mean of the modalities' maps) over ``dataset``."""
        model = unwrap_model(model or self.model)
        was_training = model.training
        model.eval()
        thresholds = thresholds or threshold_grid()
        dice = {name: PatientDice(thresholds) for name in self.modalities + ["combined"]}
        correct = torch.zeros(len(self.modalities), dtype=torch.float64)
        count = 0
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=max(self.config.batch_size, 32), num_workers=self.config.workers
        )
        for batch in loader:
            maps, pred = foreground_maps(model, batch["image"].to(self.device))
            labels = batch["label"].to(self.device)
            correct += (pred == labels[:, None]).sum(0).double().cpu()
            count += len(labels)
            masks = batch["mask"]
            for m, name in enumerate(self.modalities):
                dice[name].add(batch["subject"], maps[:, m].cpu(), masks)
            dice["combined"].add(batch["subject"], maps.mean(1).cpu(), masks)
        model.train(was_training)
        return (correct / max(count, 1)).tolist(), dice

    def validate(self, dataset: SliceDataset) -> dict[str, Any]:
        accuracy, dice = self.predict(dataset)
        scalars = {f"acc/{n}": a for n, a in zip(self.modalities, accuracy)}
        best = {name: d.best_threshold() for name, d in dice.items()}
        scalars.update({f"dice/{name}": dice[name].mean(t) for name, t in best.items()})
        return {"accuracy": accuracy, "scalars": scalars, "dice": scalars["dice/combined"]}

    def evaluate(self) -> dict[str, Any]:
        """The run's test results (``results.json``), on the main process (others return ``{}``): the
        evaluation protocol of ``python -m mmcam.evaluate`` on the test split (:func:`evaluate_run`: the
        run's default checkpoint, per-channel thresholds chosen on the validation split, per-patient metrics
        on the original voxel grid; its files go to ``RUN_DIR/eval/``), plus each network's test
        classification accuracy with the same checkpoint."""
        if not self.dist.is_main:
            return {}
        summary = evaluate_run(
            self.run_dir.path,
            split="test",
            data=str(self.cache_dir),
            device=self.config.device,
            log=self.run_dir.log,
        )
        checkpoint = Path(summary["protocol"]["checkpoint_file"])
        evaluation = (Path(summary["output_dir"]) / summary["summary_file"]).relative_to(self.run_dir.path)
        model = unwrap_model(self.model)
        model.load_state_dict(ckpt.load(checkpoint)["model"])
        accuracy, _ = self.predict(self.test_set)
        channels = summary["maps"]["cam"]["channels"]
        return {
            "protocol": f"{summary['protocol']['threshold']['description']}; {PSEUDO_MASK_RULE}; {GRID_RULE} "
            f"(python -m mmcam.evaluate, {evaluation})",
            "checkpoint": checkpoint.name,
            "evaluation": str(evaluation),
            "test_accuracy": dict(zip(self.modalities, accuracy)),
            "dice": {
                name: {"threshold": c["threshold"], **c["dice"], "per_patient": c["per_patient_dice"]}
                for name, c in channels.items()
            },
            "hd95_mm": {name: c["hd95_mm"] for name, c in channels.items()},
            "assd_mm": {name: c["assd_mm"] for name, c in channels.items()},
            "ap": {name: {**c["ap"], "per_patient": c["per_patient_ap"]} for name, c in channels.items()},
        }
