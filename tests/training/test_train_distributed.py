"""torchrun-style DDP on 2 CPU processes (gloo) gives the weights of a single process on the same global
batch. On CPU each rank normalises its own shard (SyncBatchNorm is CUDA-only), so the single-process
reference computes the loss per shard and averages the gradients, exactly what DDP does."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from mmcam import train
from mmcam.data import BuildOptions, SliceDataset
from mmcam.data.synthetic import prepare_synthetic
from mmcam.models import MultiModalCAM
from mmcam.objective import ObjectiveConfig, compute_objective
from mmcam.training import checkpoint as ckpt
from mmcam.training.trainer import EpochBatches

#: float32 intensities: the 1e-6 comparison below is at the edge of AdamW's first steps (a weight's
#: update is about lr * sign(gradient) where its gradient is near 0), and the uint16 default cache's
#: slightly different inputs put one such weight 2.7e-6 apart; the test is about DDP, not the cache.
FLOAT32 = BuildOptions(image_dtype="float32")
MODALITIES = ["t1ce", "flair"]
STEPS, PER_RANK, WORLD, SEED = 3, 2, 2, 5
ARGS = [
    "width_divisor=16",
    "lr=0.001",
    "weight_decay=0.0001",
    f"batch_size={PER_RANK}",
    "epochs=1",
    "log_every=1",
    "--transform",
    "flip",
    "--modalities",
    ",".join(MODALITIES),
    "--seed",
    str(SEED),
    "--max-steps",
    str(STEPS),
    "--no-progress",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(rank: int, port: int, cache: str, run_dir: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    code = train.main(["--data", cache, "--run-dir", run_dir, *ARGS])
    if code != 0:
        raise SystemExit(code)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return prepare_synthetic(
        tmp_path_factory.mktemp("synthetic"), "brats", n_subjects=6, seed=0, shape=(32, 32, 12), options=FLOAT32
    )


def single_process_reference(cache: Path) -> dict:
    torch.manual_seed(SEED)
    model = MultiModalCAM(MODALITIES, width_divisor=16)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    objective = ObjectiveConfig(transform="flip")
    generator = torch.Generator().manual_seed(SEED + 1)
    data = SliceDataset(cache, "train", MODALITIES)
    batches = iter(EpochBatches(len(data), PER_RANK * WORLD, SEED, epoch=0))
    for _ in range(STEPS):
        items = [data[i] for i in next(batches)]
        images = torch.stack([it["image"] for it in items])
        labels = torch.stack([it["label"] for it in items])
        optimizer.zero_grad(set_to_none=True)
        state = generator.get_state()
        for shard in range(WORLD):  # every rank draws pi from the same generator state
            generator.set_state(state)
            part = slice(shard * PER_RANK, (shard + 1) * PER_RANK)
            result = compute_objective(model, images[part], labels[part], generator, objective)
            (result.total / WORLD).backward()
        optimizer.step()
    return {k: v for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}


def test_two_process_ddp_matches_single_process(cache, tmp_path):
    run_dir = tmp_path / "ddp"
    mp.start_processes(worker, args=(free_port(), str(cache), str(run_dir)), nprocs=WORLD, start_method="spawn")
    ddp = ckpt.load(run_dir / "last.pt")["model"]
    reference = single_process_reference(cache)
    assert ckpt.load(run_dir / "last.pt")["state"]["step"] == STEPS
    for name, value in reference.items():
        torch.testing.assert_close(ddp[name], value, rtol=1e-5, atol=1e-6, msg=lambda m: f"{name}: {m}")
    # the comparison has teeth: the untrained initialisation differs from both
    torch.manual_seed(SEED)
    initial = MultiModalCAM(MODALITIES, width_divisor=16).state_dict()
    assert any(not torch.allclose(initial[k], reference[k]) for k in reference)
