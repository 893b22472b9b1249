"""Paired seeds, the premise of the ablation's paired contrasts: runs of two variants with the same seed start
from the same weights and see the same batches in the same order with the same transforms π; only the loss
differs."""

from __future__ import annotations

import torch

from mmcam.data import build_cache, discover, write_splits
from mmcam.data.synthetic import generate_synthetic
from mmcam.objective import ABLATIONS
from mmcam.training import config as cfg
from mmcam.training import trainer as trainer_module
from mmcam.training.run_dir import RunDirectory
from mmcam.training.trainer import Trainer

STEPS = 3
COMPUTE_OBJECTIVE = trainer_module.compute_objective  # the real one, before any spy


def record_run(tmp_path, cache, variant: str, seed: int, monkeypatch) -> dict:
    """Train ``STEPS`` steps; return the initial weights and, per step, the batch and π the objective got."""
    keys = {"data": str(cache), "width_divisor": 16, "batch_size": 4, "seed": seed, "max_steps": STEPS}
    config = cfg.apply(cfg.TrainConfig(), {**keys, **ABLATIONS[variant], "modalities": ["t1ce", "flair"]}, "test")
    trainer = Trainer(config, cache, RunDirectory(tmp_path / f"{variant}-{seed}"))
    initial = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    steps = []

    def spy(model, images, labels, generator, objective):
        result = COMPUTE_OBJECTIVE(model, images, labels, generator, objective)
        steps.append((images.clone(), labels.clone(), result.matrix.clone(), result.dsize, result.family))
        return result

    monkeypatch.setattr(trainer_module, "compute_objective", spy)
    trainer.fit(progress=False)
    return {"initial": initial, "steps": steps, "final": trainer.model.state_dict()}


def test_same_seed_same_start_batches_and_transforms_across_variants(tmp_path, monkeypatch):
    raw = generate_synthetic(tmp_path / "raw", "brats", n_subjects=6, seed=0, shape=(32, 32, 12))
    cache = tmp_path / "cache"
    build_cache(discover(raw), cache)
    write_splits(cache, fractions=(0.5, 0.25, 0.25), seed=0)
    cam = record_run(tmp_path, cache, "cam", 3, monkeypatch)
    full = record_run(tmp_path, cache, "full", 3, monkeypatch)
    other_seed = record_run(tmp_path, cache, "cam", 4, monkeypatch)
    assert len(cam["steps"]) == len(full["steps"]) == STEPS
    for key, value in cam["initial"].items():
        assert torch.equal(value, full["initial"][key]), key
    for a, b in zip(cam["steps"], full["steps"]):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])  # the same batch
        assert torch.equal(a[2], b[2]) and a[3:] == b[3:]  # the same π
    # the loss differs, so the weights part; and another seed changes the start and the batches
    assert any(not torch.equal(v, full["final"][k]) for k, v in cam["final"].items())
    assert any(not torch.equal(v, other_seed["initial"][k]) for k, v in cam["initial"].items())
    assert any(not torch.equal(a[0], b[0]) for a, b in zip(cam["steps"], other_seed["steps"]))
