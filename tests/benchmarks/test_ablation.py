"""benchmarks/ablation.py and ablation_stats without training: the bootstrap against analytic standard errors
and hand-computed contrasts, the run commands, the pilot summary, the README block, and the resumable
bookkeeping (finished runs are read, mismatched runs refused)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from mmcam.data.cache import INDEX_FILE

import ablation_stats as stats
from repo_paths import ROOT

SCRIPT = ROOT / "benchmarks" / "ablation.py"
PATIENTS = ("p0", "p1", "p2")


@pytest.fixture(scope="module")
def ablation():
    spec = importlib.util.spec_from_file_location("ablation_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -------------------------------------------------------------------------------------- statistics
def test_bootstrap_of_independent_scores_matches_the_standard_error():
    """One seed, many iid patients: the interval is mean ± 1.96 sd / sqrt(P) (within sampling error)."""
    rng = np.random.default_rng(1)
    table = rng.normal(0.3, 0.2, size=(1, 400))
    estimate = stats.bootstrap_mean(table, reps=4000)
    half = 1.96 * table.std(ddof=1) / math.sqrt(table.size)
    assert estimate.mean == pytest.approx(table.mean())
    assert estimate.high - estimate.mean == pytest.approx(half, rel=0.12)
    assert estimate.mean - estimate.low == pytest.approx(half, rel=0.12)


def test_bootstrap_resamples_seeds_too():
    """Rows that differ by a seed effect only: the interval is that of the row means (S = 300 seeds), which a
    patient-only bootstrap would miss (every row is constant)."""
    rng = np.random.default_rng(2)
    row_effect = rng.normal(0.0, 0.1, size=(300, 1))
    table = row_effect + np.zeros((1, 5))
    estimate = stats.bootstrap_mean(table, reps=4000)
    half = 1.96 * row_effect.std(ddof=1) / math.sqrt(300)
    assert (estimate.high - estimate.low) / 2 == pytest.approx(half, rel=0.12)


def test_paired_contrast_by_hand_and_degenerate_cases():
    a = np.array([[0.5, 0.7, 0.2], [0.4, 0.9, 0.3]])
    shift = stats.paired_contrast(a + 0.1, a)
    assert (shift.mean, shift.low, shift.high) == pytest.approx((0.1, 0.1, 0.1))  # a constant difference
    b = np.array([[0.4, 0.7, 0.1], [0.4, 0.6, 0.3]])
    estimate = stats.paired_contrast(a, b, reps=2000)
    assert estimate.mean == pytest.approx((0.1 + 0 + 0.1 + 0 + 0.3 + 0) / 6)  # the mean paired difference
    assert estimate.low <= estimate.mean <= estimate.high and estimate.n == 6
    assert stats.paired_contrast(a, b, reps=2000) == estimate  # seeded: reproducible
    # a patient without a defined score under some seed is left out of every row
    nan = a.copy()
    nan[1, 2] = np.nan
    assert stats.bootstrap_mean(nan).mean == pytest.approx(a[:, :2].mean())
    with pytest.raises(ValueError, match="shape"):
        stats.paired_contrast(a, b[:, :2])
    with pytest.raises(ValueError, match="no patient"):
        stats.bootstrap_mean(np.full((2, 2), np.nan))


# -------------------------------------------------------------------------------------- fake runs
def fake_results(dice: dict, ap: dict, accuracy: float = 0.8) -> dict:
    """``dice`` / ``ap``: ``{channel: [score per patient]}``."""
    return {
        "protocol": "fake",
        "checkpoint": "best.pt",
        "test_accuracy": {"t1ce": accuracy, "flair": accuracy},
        "dice": {c: {"threshold": 0.5, "per_patient": dict(zip(PATIENTS, v))} for c, v in dice.items()},
        "ap": {c: {"per_patient": dict(zip(PATIENTS, v))} for c, v in ap.items()},
    }


def fake_run(ablation, variant: str, seed: int, level: float) -> dict:
    scores = {c: [level, level + 0.1, level + 0.2] for c in ("t1ce", "flair", "combined")}
    config = {"preset": "quick", "max_steps": 400, "seed": seed, **ablation.variant_keys(variant, 3000.0)}
    return {"results": fake_results(scores, scores), "config": config, "run_dir": f"runs/{variant}-seed{seed}"}


def test_contrasts_of_fake_runs_by_hand(ablation):
    runs = {
        "cam": {0: fake_run(ablation, "cam", 0, 0.1), 1: fake_run(ablation, "cam", 1, 0.3)},
        "er": {0: fake_run(ablation, "er", 0, 0.2), 1: fake_run(ablation, "er", 1, 0.3)},
        "full": {0: fake_run(ablation, "full", 0, 0.5), 1: fake_run(ablation, "full", 1, 0.5)},
    }
    analysis = ablation.analyse(runs, [0, 1], reps=500)
    assert analysis["channels"] == ["t1ce", "flair", "combined"] and analysis["patients"] == list(PATIENTS)
    assert [(c["a"], c["b"]) for c in analysis["contrasts"]] == [("full", "er"), ("er", "cam")]
    er_cam = analysis["contrasts"][1]["scores"]["dice"]["combined"]
    assert er_cam["mean"] == pytest.approx(0.05)  # seed 0: +0.1 on every patient, seed 1: 0
    full_er = analysis["contrasts"][0]["scores"]["ap"]["flair"]
    assert full_er["mean"] == pytest.approx(0.25)  # (0.3 + 0.2) / 2
    assert full_er["low"] == pytest.approx(0.2) and full_er["high"] == pytest.approx(0.3)
    cam = analysis["variants"]["cam"]
    assert cam["scores"]["dice"]["t1ce"]["mean"] == pytest.approx(0.3)
    assert cam["per_seed_mean"]["dice"]["t1ce"] == pytest.approx([0.2, 0.4])
    document, text = ablation.build_report(runs, [0, 1], {"sizes": {"train": 4, "val": 2}}, reps=500)
    assert "| full − er | **+0.250 [+0.200, +0.300]**" in text
    assert "- full (ER + CMER + KD) vs ER only (SEAM-style): Dice higher on t1ce, flair, combined." in text
    assert "4 train / 2 validation / 3 test patients" in document["design"]
    json.dumps(document, allow_nan=False)


def test_pair_gain_is_the_combined_map_minus_each_modality_by_hand(ablation):
    runs = {"er": {s: fake_run(ablation, "er", s, 0.2) for s in (0, 1)}}
    for patient, value in runs["er"][0]["results"]["dice"]["combined"]["per_patient"].items():
        runs["er"][0]["results"]["dice"]["combined"]["per_patient"][patient] = value + 0.2  # seed 0 only
    runs["er"][1]["results"]["ap"]["flair"]["per_patient"]["p0"] -= 0.3  # one patient of seed 1
    analysis = ablation.analyse(runs, [0, 1], reps=500)
    gains = analysis["pair_gains"]["er"]
    assert gains["dice"]["t1ce"]["mean"] == pytest.approx(0.1) and gains["dice"]["flair"]["mean"] == pytest.approx(0.1)
    assert gains["dice"]["t1ce"]["low"] == pytest.approx(0.0) and gains["dice"]["t1ce"]["high"] == pytest.approx(0.2)
    assert gains["ap"]["t1ce"]["mean"] == pytest.approx(0.0) and gains["ap"]["flair"]["mean"] == pytest.approx(0.05)
    table = ablation.pair_gain_table(analysis)
    assert table.splitlines()[0] == (
        "| variant | ΔDice combined − t1ce | ΔDice combined − flair | ΔAP combined − t1ce | ΔAP combined − flair |"
    )
    assert table.splitlines()[2].startswith("| ER only (SEAM-style) | +0.100 [+0.000, +0.200] |")


def test_runs_with_another_budget_are_refused(ablation):
    runs = {"cam": {0: fake_run(ablation, "cam", 0, 0.1)}, "er": {0: fake_run(ablation, "er", 0, 0.1)}}
    runs["er"][0]["config"]["max_steps"] = 300
    with pytest.raises(ValueError, match=r"runs/er-seed0 differs .*\['max_steps'\]"):
        ablation.shared_budget(runs)
    runs["er"][0]["config"]["max_steps"] = 400  # lambda_cmer and the switches may differ
    runs["er"][0]["config"]["lambda_cmer"] = 7.0
    assert ablation.shared_budget(runs)["max_steps"] == 400


def test_train_command_carries_data_seed_budget_and_variant(ablation, tmp_path):
    args = ablation.parse_args(["--steps", "30", "--val-every", "10", "--runs", "R", "--cmer-weight", "500"])
    argv = ablation.train_argv(args, "er_cmer_w", 2, tmp_path / "cache")
    assert argv[:2] == ["--run-dir", str(Path("R") / "er_cmer_w-seed2")]
    assert {"use_kd=false", "use_er=true", "use_cmer=true", "lambda_cmer=500.0", "val_every_steps=10"} <= set(argv)
    config = ablation.expected_config(argv)
    assert (config["seed"], config["max_steps"], config["lambda_cmer"], config["data"]) == (
        2,
        30,
        500.0,
        str(tmp_path / "cache"),
    )
    assert ablation.expected_config(ablation.train_argv(args, "er_cmer", 2, tmp_path))["lambda_cmer"] == 1.0
    assert ablation.parse_seeds("3") == [0, 1, 2] and ablation.parse_seeds("4,7") == [4, 7]
    with pytest.raises(Exception, match="seeds"):
        ablation.parse_seeds("0")
    with pytest.raises(SystemExit):
        ablation.parse_args(["--variants", "cam,nope"])


def test_pilot_summary_reads_the_metrics_log(ablation, tmp_path):
    rows = [
        {"step": 10, "epoch": 0, "split": "train", "loss": 1.0, "er/t1ce": 0.2, "cmer/t1ce": 1e-4, "cls/t1ce": 0.7},
        {"step": 20, "epoch": 0, "split": "train", "loss": 1.0, "er/t1ce": 0.4, "cmer/t1ce": 3e-4, "cls/t1ce": 0.5},
        {"step": 30, "epoch": 0, "split": "train", "loss": 1.0, "er/t1ce": 0.3, "cmer/t1ce": 2e-4, "cls/t1ce": 0.6},
        {"step": 30, "epoch": 0, "split": "val", "acc/t1ce": 0.9, "dice/combined": 0.1},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = ablation.pilot_summary(tmp_path)
    assert summary["validation_accuracy"] == [{"step": 30, "acc/t1ce": 0.9}]
    assert summary["term_medians"]["er/t1ce"] == pytest.approx(0.3)
    assert summary["er_over_cmer"]["t1ce"] == pytest.approx(0.3 / 2e-4)


def test_readme_block_is_replaced_between_the_markers(ablation, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{ablation.README_BEGIN}\nold table\n{ablation.README_END}\noutro\n")
    ablation.replace_readme_block(readme, "new table\n")
    assert readme.read_text() == f"intro\n{ablation.README_BEGIN}\nnew table\n{ablation.README_END}\noutro\n"
    (tmp_path / "other.md").write_text("no markers\n")
    with pytest.raises(SystemExit, match="no <!-- ablation:begin -->"):
        ablation.replace_readme_block(tmp_path / "other.md", "x")


def fake_study_cache(runs: Path) -> Path:
    """``RUNS/data/cache`` as the script finds it: an index and a split of 2 train / 1 validation / 3 test."""
    cache = runs / "data" / "cache"
    cache.mkdir(parents=True)
    (cache / INDEX_FILE).write_text("{}")
    splits = {"fractions": [0.4, 0.2, 0.4], "test": list(PATIENTS), "folds": [{"train": ["a", "b"], "val": ["c"]}]}
    (cache / "splits.json").write_text(json.dumps(splits))
    return cache


def write_finished_run(ablation, args, cache: Path, variant: str, seed: int, level: float) -> None:
    """A run directory as mmcam.train leaves it, for the parts the script reads."""
    run_dir = ablation.run_path(args.runs, variant, seed)
    run_dir.mkdir(parents=True)
    config = ablation.expected_config(ablation.train_argv(args, variant, seed, cache))
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    (run_dir / "results.json").write_text(json.dumps(fake_run(ablation, variant, seed, level)["results"]))


def test_finished_runs_are_read_not_retrained(ablation, tmp_path, monkeypatch, capsys):
    runs, out = tmp_path / "runs", tmp_path / "out"
    cache = fake_study_cache(runs)
    base = ["--seeds", "2", "--variants", "cam,full", "--steps", "30", "--runs", str(runs), "--out", str(out)]
    args = ablation.parse_args(base)
    for (variant, seed), level in {("cam", 0): 0.1, ("cam", 1): 0.3, ("full", 0): 0.5, ("full", 1): 0.4}.items():
        write_finished_run(ablation, args, cache, variant, seed, level)
    monkeypatch.setattr(ablation.train, "main", lambda argv: pytest.fail(f"trained {argv}"))
    readme = tmp_path / "README.md"
    readme.write_text(f"{ablation.README_BEGIN}\n{ablation.README_END}\n")
    assert ablation.main(base + ["--reps", "300", "--readme", str(readme)]) == 0
    document = json.loads((out / "ablation_synthetic.json").read_text())
    assert document["seeds"] == [0, 1] and document["budget"]["max_steps"] == 30
    assert document["contrasts"] == []  # full - er and er - cam need er
    markdown = (out / "ablation_synthetic.md").read_text()
    assert "2 train / 1 validation / 3 test patients" in markdown and "30 steps" in markdown
    assert markdown in capsys.readouterr().out and markdown in readme.read_text()
    assert (out / "ablation_synthetic.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SystemExit, match=r"cam-seed0 was trained with another configuration \(max_steps"):
        ablation.main(base[:-4] + ["--steps", "50", "--runs", str(runs), "--out", str(out)])
    with pytest.raises(SystemExit, match=r"er-seed0.results\.json is missing"):
        ablation.main(["--seeds", "1", "--variants", "er", "--steps", "30", "--runs", str(runs), "--aggregate-only"])


def test_split_study_has_its_own_runs_outputs_and_readme_block(ablation, tmp_path, monkeypatch):
    assert ablation.parse_args([]).runs == Path("runs/ablation")
    assert ablation.parse_args(["--tumour", "split"]).runs == Path("runs/ablation-split")
    assert "--tumour" not in ablation.command_line(ablation.parse_args([]))
    assert (
        ablation.command_line(ablation.parse_args(["--tumour", "split"]))
        == "python benchmarks/ablation.py --tumour split"
    )
    runs, out = tmp_path / "runs", tmp_path / "out"
    cache = fake_study_cache(runs)
    marker = runs / "data" / "raw" / "mmcam_synthetic.json"
    marker.parent.mkdir()
    marker.write_text(json.dumps({"layout": "brats", "n_subjects": 60, "seed": 0, "shape": [96, 96, 40]}))
    base = ["--tumour", "split", "--seeds", "1", "--variants", "cam,er", "--steps", "30", "--runs", str(runs)]
    with pytest.raises(SystemExit, match="holds other phantoms than --tumour split"):
        ablation.main(base + ["--out", str(out)])
    marker.write_text(
        json.dumps({"layout": "brats", "n_subjects": 60, "seed": 0, "shape": [96, 96, 40], "tumour": "split"})
    )
    args = ablation.parse_args(base)
    for variant, level in {"cam": 0.1, "er": 0.3}.items():
        write_finished_run(ablation, args, cache, variant, 0, level)
    monkeypatch.setattr(ablation.train, "main", lambda argv: pytest.fail(f"trained {argv}"))
    readme = tmp_path / "README.md"
    begin, end = ablation.STUDY_OUTPUTS["split"][1]
    readme.write_text(f"{ablation.README_BEGIN}\nnested\n{ablation.README_END}\n{begin}\nold\n{end}\n")
    assert ablation.main(base + ["--out", str(out), "--reps", "200", "--readme", str(readme)]) == 0
    document = json.loads((out / "ablation_synthetic_split.json").read_text())
    assert document["tumour"] == "split" and "split tumours" in document["design"]
    assert not (out / "ablation_synthetic.json").exists()
    markdown = (out / "ablation_synthetic_split.md").read_text()
    assert readme.read_text() == f"{ablation.README_BEGIN}\nnested\n{ablation.README_END}\n{begin}\n{markdown}{end}\n"
