"""benchmarks/ablation.py without training: the table arithmetic on fake results.json files, the run
commands, and the resumable bookkeeping (finished runs are read, mismatched runs refused)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import yaml

from repo_paths import ROOT

SCRIPT = ROOT / "benchmarks" / "ablation.py"


@pytest.fixture(scope="module")
def ablation():
    spec = importlib.util.spec_from_file_location("ablation_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_results(combined: float, t1ce: float, flair: float, accuracy: float = 0.8) -> dict:
    entry = lambda mean: {"threshold": 0.5, "mean": mean, "std": 0.0, "per_patient": {"a": mean}}  # noqa: E731
    return {
        "protocol": "per-patient 3-D Dice (fake)",
        "checkpoint": "best_dice.pt",
        "test_accuracy": {"t1ce": accuracy, "flair": accuracy},
        "dice": {"t1ce": entry(t1ce), "flair": entry(flair), "combined": entry(combined)},
    }


def fake_config(variant_switches: dict, seed: int, epochs: int = 3) -> dict:
    return {
        "preset": "quick",
        "epochs": epochs,
        "batch_size": 16,
        "lr": 1e-3,
        "weight_decay": 1e-4,
        "width_divisor": 8,
        "transform": "all",
        "data": None,
        "synthetic_layout": "brats",
        "synthetic_subjects": 24,
        "seed": seed,
        **variant_switches,
    }


def test_mean_and_sample_std_against_hand_computation(ablation):
    cam, full = ablation.ABLATIONS["cam"], ablation.ABLATIONS["full"]
    runs = {
        "cam": {
            0: {"results": fake_results(0.2, 0.1, 0.3, 0.7), "config": fake_config(cam, 0)},
            1: {"results": fake_results(0.4, 0.3, 0.5, 0.8), "config": fake_config(cam, 1)},
            2: {"results": fake_results(0.9, 0.2, 0.1, 0.9), "config": fake_config(cam, 2)},
        },
        "full": {0: {"results": fake_results(0.6, 0.5, 0.7), "config": fake_config(full, 0)}},
    }
    table = ablation.aggregate(runs)
    combined = table["cam"]["dice"]["combined"]
    # by hand: mean (0.2 + 0.4 + 0.9) / 3 = 0.5; deviations -0.3, -0.1, 0.4 -> sum of squares 0.26;
    # sample variance 0.26 / 2 = 0.13
    assert combined["mean"] == pytest.approx(0.5)
    assert combined["std"] == pytest.approx(math.sqrt(0.13))
    assert combined["per_seed"] == [0.2, 0.4, 0.9]
    assert table["cam"]["dice"]["t1ce"]["mean"] == pytest.approx(0.2)  # (0.1 + 0.3 + 0.2) / 3
    assert table["cam"]["dice"]["t1ce"]["std"] == pytest.approx(0.1)  # deviations -0.1, 0.1, 0
    assert table["cam"]["test_accuracy"]["flair"]["mean"] == pytest.approx(0.8)
    assert table["full"]["dice"]["combined"] == {"mean": 0.6, "std": None, "per_seed": [0.6]}  # one seed
    text = ablation.markdown_table(table, ["t1ce", "flair"])
    assert "| CAM only (classification) | ✓ |  |  |  | 0.500 ± 0.361 | 0.200 ± 0.100 |" in text
    assert "| full (ER + CMER + KD) | ✓ | ✓ | ✓ | ✓ | 0.600 | 0.500 | 0.700 |" in text


def test_runs_with_another_budget_are_refused(ablation):
    runs = {
        "cam": {0: {"results": fake_results(0.2, 0.1, 0.3), "config": fake_config(ablation.ABLATIONS["cam"], 0)}},
        "er": {
            0: {
                "results": fake_results(0.2, 0.1, 0.3),
                "run_dir": "runs/er-seed0",
                "config": fake_config(ablation.ABLATIONS["er"], 0, epochs=4),
            }
        },
    }
    with pytest.raises(ValueError, match=r"runs/er-seed0 differs .*\['epochs'\]"):
        ablation.shared_budget(runs)


def test_train_command_carries_seed_budget_and_switches(ablation):
    args = ablation.parse_args(["--epochs", "3", "--runs", "R", "--set", "batch_size=8"])
    argv = ablation.train_argv(args, "er_cmer", 2)
    assert argv[:2] == ["--run-dir", str(Path("R") / "er_cmer-seed2")]
    assert ["--seed", "2"] == argv[argv.index("--seed") : argv.index("--seed") + 2]
    assert ["--epochs", "3"] == argv[argv.index("--epochs") : argv.index("--epochs") + 2]
    assert {"use_cls=true", "use_kd=false", "use_er=true", "use_cmer=true", "batch_size=8"} <= set(argv)
    config = ablation.expected_config(argv)
    assert (config["seed"], config["epochs"], config["batch_size"], config["use_kd"], config["use_cmer"]) == (
        2,
        3,
        8,
        False,
        True,
    )
    assert ablation.parse_seeds("3") == [0, 1, 2] and ablation.parse_seeds("4,7") == [4, 7]
    assert ablation.parse_seeds("5,") == [5]
    with pytest.raises(Exception, match="seeds"):
        ablation.parse_seeds("0")


def write_finished_run(ablation, runs: Path, variant: str, seed: int, epochs: int, results: dict) -> None:
    """A run directory as mmcam.train leaves it, for the parts the script reads."""
    args = ablation.parse_args(["--epochs", str(epochs), "--runs", str(runs)])
    run_dir = ablation.run_path(runs, variant, seed)
    run_dir.mkdir(parents=True)
    config = ablation.expected_config(ablation.train_argv(args, variant, seed))
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    (run_dir / "results.json").write_text(json.dumps(results))


def test_finished_runs_are_read_not_retrained(ablation, tmp_path, monkeypatch, capsys):
    runs, out = tmp_path / "runs", tmp_path / "out"
    values = {("cam", 0): 0.1, ("cam", 1): 0.3, ("full", 0): 0.5, ("full", 1): 0.9}
    for (variant, seed), value in values.items():
        write_finished_run(ablation, runs, variant, seed, 3, fake_results(value, value / 2, value))
    monkeypatch.setattr(ablation.train, "main", lambda argv: pytest.fail(f"trained {argv}"))
    argv = ["--seeds", "2", "--variants", "cam,full", "--epochs", "3", "--runs", str(runs), "--out", str(out)]
    assert ablation.main(argv) == 0
    document = json.loads((out / "ablation_synthetic.json").read_text())
    assert document["seeds"] == [0, 1] and document["budget"]["epochs"] == 3
    full = document["variants"]["full"]["dice"]["combined"]
    assert full["mean"] == pytest.approx(0.7) and full["std"] == pytest.approx(math.sqrt(0.08))
    markdown = (out / "ablation_synthetic.md").read_text()
    assert "| full (ER + CMER + KD) | ✓ | ✓ | ✓ | ✓ | 0.700 ± 0.283 |" in markdown
    assert "3 epochs" in markdown and "seeds 0, 1" in markdown and "preset `quick`" in markdown
    assert markdown in capsys.readouterr().out
    # the same folder asked with another budget: refused, naming the run
    with pytest.raises(SystemExit, match=r"cam-seed0 was trained with another configuration \(epochs"):
        ablation.main(
            ["--seeds", "2", "--variants", "cam,full", "--epochs", "5", "--runs", str(runs), "--out", str(out)]
        )
    # a missing run with --aggregate-only: refused, naming the file
    with pytest.raises(SystemExit, match=r"er-seed0.results\.json is missing"):
        ablation.main(
            [
                "--seeds",
                "1",
                "--variants",
                "er",
                "--epochs",
                "3",
                "--runs",
                str(runs),
                "--out",
                str(out),
                "--aggregate-only",
            ]
        )
