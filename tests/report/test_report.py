"""The run report (``python -m mmcam.report``): exact overlays, slice choice, files and links, errors.

The overlay and slice-choice tests need numpy and torch only; the tests that write a report skip when
matplotlib (the ``report`` extra) is not installed.
"""

from __future__ import annotations

import html as html_module
import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from mmcam import train
from mmcam.data import SliceDataset
from mmcam.data.synthetic import prepare_synthetic
from mmcam.report import overlays as ov
from mmcam.report.run_outputs import ReportError, read_run
from mmcam.report.slices import select_slices

GREEN = np.array(ov.CONTOUR_RGB, dtype=np.uint8)
MODALITIES = ["t1ce", "flair"]


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return prepare_synthetic(tmp_path_factory.mktemp("synthetic"), "brats", n_subjects=5, seed=0, shape=(32, 32, 12))


@pytest.fixture(scope="module")
def run_dir(cache, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "run"
    code = train.main(
        [
            "--data",
            str(cache),
            "--run-dir",
            str(run),
            "--modalities",
            ",".join(MODALITIES),
            "width_divisor=16",
            "batch_size=4",
            "epochs=1",
            "--max-steps",
            "2",
            "--no-progress",
        ]
    )
    assert code == 0
    return run


@pytest.fixture(scope="module")
def report(run_dir) -> Path:
    """The report of the 2-step run, written once through the command line."""
    pytest.importorskip("matplotlib")
    from mmcam.report import main

    assert main([str(run_dir), "--slices", "3"]) == 0
    return run_dir / "report"


@pytest.fixture(scope="module")
def positive_report(run_dir, tmp_path_factory) -> tuple[Path, Path]:
    """A copy of the run whose extra checkpoint ``positive.pt`` predicts "target" on every slice (its
    classifier weights made -|w| for class 0 and +|w| for class 1) and whose thresholds are 0.5, so that
    the pseudo-masks are neither empty nor full; and its report."""
    pytest.importorskip("matplotlib")
    from mmcam.report import write_report
    from mmcam.training import checkpoint as ckpt

    run = tmp_path_factory.mktemp("positive") / "run"
    shutil.copytree(run_dir, run, ignore=shutil.ignore_patterns("report"))
    saved = ckpt.load(run / "best.pt")
    for name in MODALITIES:
        weight = saved["model"][f"networks.{name}.classifier.weight"]
        weight[0], weight[1] = -weight[0].abs(), weight[1].abs() + 1e-3
    ckpt.atomic_save(saved, run / "positive.pt")
    results = json.loads((run / "results.json").read_text())
    for entry in results["dice"].values():
        entry["threshold"] = 0.5
    (run / "results.json").write_text(json.dumps(results))
    write_report(run, slices=3, checkpoint="positive")
    return run, run / "report"


def boundary_by_loops(mask: np.ndarray) -> np.ndarray:
    """Independent reference of the inner 4-connected boundary (explicit neighbour loops)."""
    h, w = mask.shape
    out = np.zeros((h, w), bool)
    for r in range(h):
        for c in range(w):
            if not mask[r, c]:
                continue
            for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1)):
                rr, cc = r + dr, c + dc
                if not (0 <= rr < h and 0 <= cc < w) or not mask[rr, cc]:
                    out[r, c] = True
    return out


def read_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


# -------------------------------------------------------------------------- overlays (numpy only)
def test_mask_boundary_matches_an_independent_loop_implementation():
    rng = np.random.default_rng(0)
    for _ in range(20):
        mask = rng.random((13, 17)) < rng.uniform(0.2, 0.8)
        np.testing.assert_array_equal(ov.mask_boundary(mask), boundary_by_loops(mask))
    block = np.zeros((7, 7), bool)
    block[2:5, 2:5] = True  # a 3x3 square: everything but its centre is boundary
    expected = block.copy()
    expected[3, 3] = False
    np.testing.assert_array_equal(ov.mask_boundary(block), expected)


def test_slice_panels_place_contour_fill_and_heat_exactly():
    h, w, scale = 10, 12, 3
    image = np.linspace(0.0, 1.0, h * w).reshape(h, w)
    truth = np.zeros((h, w), bool)
    truth[3:8, 4:9] = True
    values = np.zeros((h, w))
    values[1:4, 1:6] = 1.0
    pseudo = values >= 0.5
    lut = np.stack([np.arange(256), np.arange(256) // 2, 255 - np.arange(256)], axis=1).astype(np.uint8)
    panels = ov.slice_panels(image, truth, values, pseudo, lut, scale)
    contour = np.repeat(np.repeat(boundary_by_loops(truth), scale, 0), scale, 1)
    for kind, panel in panels.items():
        assert panel.shape == (h * scale, w * scale, 3) and panel.dtype == np.uint8, kind
        np.testing.assert_array_equal(np.all(panel == GREEN, axis=2), contour, err_msg=kind)
    big = lambda a: np.repeat(np.repeat(a, scale, 0), scale, 1)  # noqa: E731
    off_contour = ~contour
    grey = panels["image"]
    assert np.all(grey[off_contour][:, 0] == grey[off_contour][:, 1])  # the image panel is grey
    red = panels["mask"].astype(int)
    assert big(pseudo)[off_contour].any() and (~big(pseudo))[off_contour].any()
    np.testing.assert_array_equal((red[..., 0] > red[..., 1])[off_contour], big(pseudo)[off_contour])
    np.testing.assert_array_equal(red[off_contour & ~big(pseudo)], grey[off_contour & ~big(pseudo)])
    heat = panels["cam"].astype(int)
    hot = off_contour & big(values == 1.0)
    cold = off_contour & big(values == 0.0)
    expected_hot = np.round(0.4 * grey[hot].astype(float) + 0.6 * lut[255]).astype(int)
    expected_cold = np.round(0.4 * grey[cold].astype(float) + 0.6 * lut[0]).astype(int)
    np.testing.assert_array_equal(heat[hot], expected_hot)
    np.testing.assert_array_equal(heat[cold], expected_cold)


def test_no_layer_produces_the_contour_colour():
    grey_levels = np.arange(256, dtype=np.float64).reshape(16, 16)
    grey = ov.grey_image(grey_levels)
    everywhere = np.ones((16, 16), bool)
    assert not np.any(np.all(ov.tint(grey, everywhere) == GREEN, axis=2))
    pure_green_lut = np.tile(GREEN, (256, 1))  # worst case for the heat layer
    for v in (0.0, 0.5, 1.0):
        blended = ov.heat_overlay(grey, np.full((16, 16), v), pure_green_lut)
        assert not np.any(np.all(blended == GREEN, axis=2))


def test_display_scale_and_enlarge():
    assert ov.display_scale((32, 32)) == 6 and ov.display_scale((240, 240)) == 1 and ov.display_scale((96, 80)) == 2
    a = np.arange(6, dtype=np.uint8).reshape(2, 3)
    big = ov.enlarge(a, 2)
    assert big.shape == (4, 6) and big[3, 5] == a[1, 2] and big[0, 1] == a[0, 0]
    with pytest.raises(ValueError, match="factor"):
        ov.enlarge(a, 0)


# ---------------------------------------------------------------------------- slice choice, errors
def test_slices_are_the_largest_lesions_of_the_first_patients(cache):
    dataset = SliceDataset(cache, "train", MODALITIES)
    areas: dict[str, list[tuple[int, int]]] = {}
    for i in range(len(dataset)):
        item = dataset[i]
        if int(item["label"]) == 1:
            areas.setdefault(item["subject"], []).append((int(item["mask"].sum()), i))
    subjects = [s for s in dataset.subject_ids if s in areas]
    assert len(subjects) >= 2
    chosen = select_slices(dataset, 2)
    expected = [max(areas[s], key=lambda a: (a[0], -a[1]))[1] for s in subjects[:2]]
    assert [c.index for c in chosen] == expected
    assert [c.subject for c in chosen] == subjects[:2]
    # more slices than subjects: every subject once, then the next-largest slices
    many = select_slices(dataset, len(subjects) + 1)
    assert [c.subject for c in many[: len(subjects)]] == subjects
    second = sorted(areas[subjects[0]], key=lambda a: (-a[0], a[1]))[1][1]
    assert many[-1].index == second
    assert select_slices(dataset, 2) == chosen  # deterministic


def test_missing_and_incomplete_run_directories_are_named(run_dir, tmp_path):
    with pytest.raises(ReportError, match="does not exist"):
        read_run(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportError, match="no config.yaml"):
        read_run(tmp_path / "empty")
    partial = tmp_path / "partial"
    shutil.copytree(run_dir, partial, ignore=shutil.ignore_patterns("report"))
    (partial / "results.json").unlink()
    with pytest.raises(ReportError, match=r"incomplete: no results\.json.*--resume"):
        read_run(partial)


def test_missing_matplotlib_names_the_extra(monkeypatch):
    from mmcam.report.figures import require_matplotlib

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(ReportError, match=r"mmcam\[report\]"):
        require_matplotlib()


# ------------------------------------------------------------------------- the report (matplotlib)
def test_report_files_links_and_image_sizes(report):
    html = (report / "index.html").read_text()
    referenced = set(re.findall(r'(?:src|href)="([^"]+\.png)"', html))
    on_disk = {p.relative_to(report).as_posix() for p in report.rglob("*.png")}
    assert on_disk and referenced == on_disk  # every PNG is on the page, every image on the page exists
    manifest = json.loads((report / "report.json").read_text())
    assert set(manifest["entries"]) == {*MODALITIES, "combined"}
    for entry in manifest["entries"].values():
        assert len(entry["slices"]) == 3
        for record in entry["slices"]:
            assert record["scale"] == 6
            for name in record["files"].values():
                assert read_png(report / name).shape == (32 * 6, 32 * 6, 3)
    for name in [e["figure"] for e in manifest["entries"].values()] + list(manifest["curves"].values()):
        image = read_png(report / name)
        assert image.shape[0] > 200 and image.shape[1] > 200
        assert image.std() > 0  # not blank
    results = json.loads((report.parent / "results.json").read_text())
    assert results["protocol"] in html_module.unescape(html)
    assert not [p for p in report.parent.iterdir() if p.name.startswith(".tmp-mmcam-")]


def check_overlays(report: Path, run: Path, cache: Path) -> int:
    """Compare every modality panel of a report with an independent recomputation: the contour pixels
    are exactly the enlarged mask boundary; the pseudo-mask panel is the grey image outside ``map >= t``
    and red-tinted inside. Returns the number of slices whose pseudo-mask is neither empty nor full."""
    from mmcam.cams.pseudo_masks import foreground_maps
    from mmcam.models import MultiModalCAM
    from mmcam.training import checkpoint as ckpt

    manifest = json.loads((report / "report.json").read_text())
    dataset = SliceDataset(cache, "test", MODALITIES)
    saved = ckpt.load(run / manifest["checkpoint"])
    model = MultiModalCAM(saved["modalities"], width_divisor=16)
    model.load_state_dict(saved["model"])
    model.eval()
    mixed = 0
    for m, name in enumerate(MODALITIES):
        entry = manifest["entries"][name]
        for record in entry["slices"]:
            item = dataset[record["dataset_index"]]
            assert (item["subject"], item["slice"]) == (record["subject"], record["slice"])
            s = record["scale"]
            big = lambda a: np.repeat(np.repeat(np.asarray(a), s, 0), s, 1)  # noqa: E731
            contour = big(boundary_by_loops(item["mask"].numpy().astype(bool)))
            assert contour.any()
            panels = {kind: read_png(report / f) for kind, f in record["files"].items()}
            for kind, panel in panels.items():
                np.testing.assert_array_equal(np.all(panel == GREEN, axis=2), contour, err_msg=f"{name} {kind}")
            maps, _ = foreground_maps(model, item["image"][None])
            pseudo = big((maps[0, m] >= entry["threshold"]).numpy())
            fill = panels["mask"].astype(int)
            off = ~contour
            assert int(pseudo.sum()) // (s * s) == record["pseudo_mask_pixels"]
            np.testing.assert_array_equal(fill[off & ~pseudo], panels["image"][off & ~pseudo].astype(int))
            np.testing.assert_array_equal((fill[..., 0] > fill[..., 1])[off], pseudo[off])
            mixed += bool(pseudo[off].any() and not pseudo[off].all())
    return mixed


def test_report_overlays_are_drawn_at_the_right_pixels(report, run_dir, cache):
    check_overlays(report, run_dir, cache)


def test_pseudo_masks_are_drawn_at_the_right_pixels(positive_report, cache):
    run, report = positive_report
    manifest = json.loads((report / "report.json").read_text())
    assert manifest["checkpoint"] == "positive.pt" and set(manifest["thresholds"].values()) == {0.5}
    assert check_overlays(report, run, cache) >= 2  # the comparison covers non-trivial masks


def evaluation_summary(threshold: float, *, oracle: bool, checkpoint: str = "best") -> dict:
    """A summary in the documented format of ``python -m mmcam.evaluate`` (eval/<name>_summary.json)."""
    stats = {"mean": 0.4321, "std": 0.1, "n": 1, "n_undefined": 0}
    channels = {
        c: {"threshold": threshold, "dice": stats, "hd95_mm": stats, "assd_mm": stats, "dice_2d": stats}
        for c in [*MODALITIES, "combined"]
    }
    return {
        "format": "mmcam-evaluation",
        "version": 1,
        "oracle": oracle,
        "warning": "ORACLE: threshold tuned on test labels" if oracle else None,
        "protocol": {
            "split": "test",
            "n_subjects": 1,
            "subjects": ["synth_00002"],
            "checkpoint": checkpoint,
            "threshold": {
                "mode": "oracle" if oracle else "val",
                "value": None,
                "description": "chosen on the validation split",
                "selected_on": "val",
            },
            "aggregation": "mean and population std over the patients",
        },
        "maps": {"cam": {"cases_csv": f"test{'_oracle' if oracle else ''}_cam_cases.csv", "channels": channels}},
    }


def test_eval_summaries_are_copied_shown_and_give_the_threshold(run_dir, tmp_path):
    pytest.importorskip("matplotlib")
    from mmcam.report import write_report

    run = tmp_path / "run"
    shutil.copytree(run_dir, run, ignore=shutil.ignore_patterns("report"))
    (run / "eval").mkdir(exist_ok=True)  # the trainer's own test evaluation is there already
    (run / "eval" / "test_summary.json").write_text(json.dumps(evaluation_summary(0.3, oracle=False)))
    (run / "eval" / "test_cam_cases.csv").write_text("subject,threshold_mode,flair_dice\nsynth_00002,val,0.4321\n")
    (run / "eval" / "test_oracle_summary.json").write_text(json.dumps(evaluation_summary(0.9, oracle=True)))
    protocol = "an evaluation file of another format, with its protocol stated in a long sentence like this"
    other = {"protocol": protocol, "dice": {"mean": 0.25, "std": 0.5}}
    (run / "eval" / "other_summary.json").write_text(json.dumps(other))
    (run / "eval" / "other_cases.csv").write_text("subject,dice\nsynth_00002,0.25\n")
    index = write_report(run, tmp_path / "out", slices=1)
    html = index.read_text()
    manifest = json.loads((tmp_path / "out" / "report.json").read_text())
    # the validation-chosen threshold of eval/test_summary.json, never the oracle's
    assert set(manifest["thresholds"].values()) == {0.3}
    assert manifest["threshold_source"].endswith("eval/test_summary.json")
    assert "ORACLE: threshold tuned on test labels" in html and "0.432 ± 0.100" in html
    assert protocol in html and "0.250 ± 0.500" in html
    for name in (
        "test_summary.json",
        "test_cam_cases.csv",
        "test_oracle_summary.json",
        "other_summary.json",
        "other_cases.csv",
    ):
        assert f'href="eval/{name}"' in html, name
        assert (tmp_path / "out" / "eval" / name).read_bytes() == (run / "eval" / name).read_bytes()
    assert "test_oracle_cam_cases.csv" not in manifest["evaluations"]  # listed but absent: not copied


def test_cli_errors_are_clear(run_dir, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from mmcam.report import main

    assert main([str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    other = tmp_path / "not-a-report"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    assert main([str(run_dir), "--out", str(other)]) == 2
    assert "not a previous report" in capsys.readouterr().err and (other / "keep.txt").is_file()
    assert main([str(run_dir), "--out", str(tmp_path / "r"), "--checkpoint", "nonexistent"]) == 2
    assert "nonexistent" in capsys.readouterr().err


def test_a_missing_cache_is_named(run_dir, tmp_path):
    pytest.importorskip("matplotlib")
    import yaml

    from mmcam.report import write_report

    run = tmp_path / "run"
    shutil.copytree(run_dir, run, ignore=shutil.ignore_patterns("report"))
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["data"] = str(tmp_path / "moved-cache")
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ReportError, match=r"no slice cache at .*moved-cache.*pass --data CACHE"):
        write_report(run, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "moved-cache-mmcam-cache").exists()


def test_a_failed_rewrite_keeps_the_previous_report(run_dir, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from mmcam.report import build, write_report

    out = tmp_path / "report"
    write_report(run_dir, out, slices=1)
    before = (out / "report.json").read_text()
    calls = {"n": 0}
    original = build.write_png

    def failing(path, rgb):
        calls["n"] += 1
        if calls["n"] == 4:
            raise OSError("disk full")
        return original(path, rgb)

    monkeypatch.setattr(build, "write_png", failing)
    with pytest.raises(OSError, match="disk full"):
        write_report(run_dir, out, slices=2)
    assert (out / "report.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]  # no temporary folder left
