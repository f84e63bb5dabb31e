"""``actmatch benchmark`` end to end on two small real photos, with cheap settings."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from PIL import Image

from actmatch.commands import benchmark
from actmatch.evaluation.batching import PassCounter
from actmatch.evaluation.benchmark import (
    BenchImage,
    add_derived,
    compare_pairs,
    result_fields,
    score_image,
    sufficient_with_cut,
)
from actmatch.evaluation.columns import format_paired, headline
from actmatch.evaluation.families import default_exam
from actmatch.explainers.classifier import load_classifier
from actmatch.explainers.fit_checkpoint import UNET_INIT_KEY
from actmatch.explainers.stages import BorderFree, Scan
from actmatch.explainers.unet import MaskUNet
from lightning_helpers import torch_threads

CHEAP = [
    "--steps",
    "2",
    "--rise-masks",
    "4",
    "--window",
    "24",
    "--ig-steps",
    "2",
    "--curve-steps",
    "2",
    "--sanity-images",
    "1",
    "--input-size",
    "48",
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Two scikit-image photos, a random tiny timm model's weights and a fake `fit` checkpoint."""
    import skimage.data

    root = tmp_path_factory.mktemp("bench")
    photos = root / "photos"
    photos.mkdir()
    Image.fromarray(skimage.data.coffee()).resize((120, 80)).save(photos / "coffee.png")
    Image.fromarray(skimage.data.chelsea()).resize((100, 80)).save(photos / "chelsea.png")
    weights = root / "tiny.pth"
    torch.manual_seed(0)
    torch.save(load_classifier("test_efficientnet", pretrained=False).model.state_dict(), weights)
    ckpt = root / "fit.ckpt"
    unet = MaskUNet()
    spec = {"class_path": "actmatch.explainers.unet.MaskUNet", "init_args": unet.init_args()}
    torch.save({"state_dict": {f"unet.{k}": v for k, v in unet.state_dict().items()}, UNET_INIT_KEY: spec}, ckpt)
    pool = root / "pool"
    pool.mkdir()
    Image.fromarray(skimage.data.astronaut()).resize((90, 90)).save(pool / "astronaut.png")
    Image.fromarray(skimage.data.rocket()).resize((60, 90)).save(pool / "rocket.png")
    return photos, weights, ckpt, pool


def test_benchmark_runs_end_to_end_and_writes_every_file(setup, tmp_path, capsys):
    photos, weights, ckpt, pool = setup
    methods = "am,am-amortized,saliency,gradcam,occlusion,ig,rise,convad,centre"
    argv = ["--images", str(photos), "--methods", methods, "--out", str(tmp_path), "--backbone", "test_efficientnet",
            "--weights", str(weights), "--checkpoint", str(ckpt), "--gallery", "2", "--exam-photos", str(pool),
            *CHEAP]  # fmt: skip
    assert benchmark.main("benchmark", argv) == 0
    for name in ("results.csv", "summary.csv", "paired.csv", "summary.png", "comparison.png", "report.html"):
        assert (tmp_path / name).stat().st_size > 0, name
    for photo in photos.iterdir():  # every method's map of every image, for the report's gallery
        assert {p.name for p in (tmp_path / "maps" / photo.stem).glob("*.png")} >= {f"{m}.png" for m in methods.split(",")}
    report = (tmp_path / "report.html").read_text()
    assert "maps/" in report and "On the exam" in report and "robust.area" in report and "p (Holm)" in report
    assert "difference [95 %]" in report
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert len(rows) == 2 * 9
    assert not any(r["error"] for r in rows)
    assert set(rows[0]) >= {"kept_equal_area", "smallest_sufficient_area", "insertion_auc", "deletion_auc", "robustness",
                            "seconds", "kept_at_5", "kept_at_10", "kept_at_20", "robust_sufficient_area", "robust_photos",
                            "robust_road",
                            "insertion_auc_rise", "dg_score", "dg_score_fill", "kept_dilated", "ratio_dilated", "kept_shift",
                            "kept_readback", "kept_resampled", "ratio_equal_area", "ratio_at_10", "sanity_spearman"}  # fmt: skip
    for r in rows:
        assert 0 <= float(r["insertion_auc"]) <= 1 and 0 < float(r["smallest_sufficient_area"]) <= 1
        assert 0 <= float(r["insertion_auc_rise"]) <= 1 and 0 < float(r["robust_sufficient_area"]) <= 1
        assert {r["kept_at_5"], r["kept_at_10"], r["kept_at_20"], r["kept_equal_area"], r["kept_dilated"]} <= {"0", "1"}
        assert 0 <= float(r["robustness"]) <= 1 and 0 <= float(r["kept_shift"]) <= 1
        # the region that keeps the label under the mean fill is never smaller than the smallest robust-sufficient one by more
        # than the grid allows: a robust cut also keeps the label on most draws, not necessarily with the fill
        assert float(r["dg_score"]) >= math.log(0.05) - 1e-6  # log max(a, 0.05) − log p with p <= 1
    sanity = [r for r in rows if r["image"].endswith("chelsea.png")]  # the first image (sorted) gets the sanity check
    assert all(r["sanity_spearman"] not in ("", None) for r in sanity)
    assert all(r["sanity_spearman"] in ("", None) for r in rows if r not in sanity)
    # the centre's map never reads the classifier, so the randomised classifier's map is the same map
    assert [float(r["sanity_spearman"]) for r in sanity if r["method"] == "centre"] == [pytest.approx(1.0)]
    am_area = {r["image"]: r["area"] for r in rows if r["method"] == "am"}
    assert all(r["area"] == am_area[r["image"]] for r in rows)  # every map cut to actmatch's area
    summary = list(csv.DictReader((tmp_path / "summary.csv").open()))
    assert [r["method"] for r in summary] == methods.split(",")
    for (
        r
    ) in summary:  # every metric has its interval, and the interval holds the estimate (n/a: no value, e.g. a constant map's ρ)
        for key, *_ in benchmark.SUMMARY_METRICS:
            if math.isnan(float(r[key])):
                assert math.isnan(float(r[f"{key}_ci_low"])), key
                continue
            assert float(r[f"{key}_ci_low"]) <= float(r[key]) + 1e-9 <= float(r[f"{key}_ci_high"]) + 2e-9, key
    paired = list(csv.DictReader((tmp_path / "paired.csv").open()))
    assert len(paired) == 8 * len(benchmark.PAIRED_METRICS)  # am against the 8 others, per metric
    for r in paired:
        # the sanity check ran on the first image only (and a constant map, e.g. an untrained U-Net's, has no ρ)
        n = (0, 1) if r["metric"].startswith("sanity") else (2,)
        assert r["reference"] == "am" and int(r["wins"]) + int(r["ties"]) + int(r["losses"]) == int(r["n"]) and int(r["n"]) in n
        if int(r["n"]):  # the gap am − baseline inside its bootstrap interval
            assert float(r["difference_ci_low"]) - 1e-9 <= float(r["difference"]) <= float(r["difference_ci_high"]) + 1e-9
        if r["group"] == "construction":
            assert r["test"] == "by construction" and r["p_value"] == "nan" and r["significant"] == "False"
        elif int(r["n"]) == 0:  # no pair to test
            assert r["test"] == "none" and r["p_value"] == "nan"
        else:
            assert 0 <= float(r["p_value"]) <= float(r["p_holm"]) <= 1 and r["test"] in ("sign", "wilcoxon", "none")
        assert r["significant"] == "False"  # two images can never reach p < 0.05
    out = capsys.readouterr().out
    assert "kept@area" in out and "kept@10%" in out and "rise" in out and "median equal-area cut" in out
    assert "am vs" in out and "p<0.05" in out and " [" in out and "On the exam" in out and "p(Holm)" in out
    assert (
        max(
            len(line)
            for line in out.splitlines()
            if not line.startswith(("wrote", "label kept", "am against", "metrics", "On the"))
        )
        <= 120
    )
    assert "images classified = floor" in out

    # --from-results: the same tables from the rows on disk, for all images or the first N
    again = tmp_path / "again"
    assert benchmark.main("benchmark", ["--from-results", str(tmp_path / "results.csv"), "--out", str(again)]) == 0
    for ours, theirs in zip(csv.DictReader((again / "summary.csv").open()), summary):
        assert ours["method"] == theirs["method"]
        for key in ("kept_at_10", "median_smallest_sufficient_area", "median_sufficient_area_with_cut", "insertion_auc"):
            assert float(ours[key]) == pytest.approx(float(theirs[key]), rel=1e-4), key
    assert list(csv.DictReader((again / "paired.csv").open())) == paired  # the same tests, the same p
    argv = ["--from-results", str(tmp_path / "results.csv"), "--limit", "1", "--out", str(tmp_path / "first")]
    assert benchmark.main("benchmark", argv) == 0
    first = list(csv.DictReader((tmp_path / "first" / "summary.csv").open()))
    assert [r["method"] for r in first] == methods.split(",") and {r["images"] for r in first} == {"1"}
    assert "its first 1 image(s)" in capsys.readouterr().out


def test_resume_runs_only_the_images_an_interrupted_run_did_not_finish(setup, tmp_path, capsys):
    photos, weights, _, pool = setup
    argv = ["--images", str(photos), "--methods", "saliency,gradcam", "--out", str(tmp_path), "--backbone",
            "test_efficientnet", "--weights", str(weights), *CHEAP]  # fmt: skip
    assert benchmark.main("benchmark", argv) == 0
    results = tmp_path / "results.csv"
    full = list(csv.DictReader(results.open()))
    first = full[0]["image"]
    # an interrupted run: only the first image's rows, and one of them failed
    kept = [r for r in full if r["image"] == first]
    benchmark.write_csv(results, kept, result_fields())
    capsys.readouterr()
    assert benchmark.main("benchmark", [*argv, "--resume"]) == 0
    err = capsys.readouterr().err
    assert "resume: 1 of 2 image(s)" in err and "from the earlier run" in err
    again = list(csv.DictReader(results.open()))
    assert sorted((r["image"], r["method"]) for r in again) == sorted((r["image"], r["method"]) for r in full)
    assert [r for r in again if r["image"] == first] == kept  # taken over as written, not recomputed
    # a failed row is run again
    kept[1]["error"] = "RuntimeError: out of memory"
    benchmark.write_csv(results, kept, result_fields())
    assert benchmark.main("benchmark", [*argv, "--resume"]) == 0
    assert "resume: 0 of 2 image(s)" in capsys.readouterr().err
    # rows of other settings are not taken over: the resume is refused and nothing is touched
    before = results.read_text()
    assert benchmark.main("benchmark", [*argv, "--resume", "--exam-seed", "7"]) == 2
    err = capsys.readouterr().err
    assert "other settings (exam differ" in err and "settings.json" in err
    assert results.read_text() == before


def test_from_results_names_a_missing_or_foreign_file(tmp_path, capsys):
    assert benchmark.main("benchmark", ["--from-results", str(tmp_path / "nope.csv"), "--out", str(tmp_path)]) == 2
    assert "nope.csv" in capsys.readouterr().err
    foreign = tmp_path / "other.csv"
    foreign.write_text("a,b\n1,2\n")
    assert benchmark.main("benchmark", ["--from-results", str(foreign), "--out", str(tmp_path)]) == 2
    assert "not a benchmark results.csv" in capsys.readouterr().err
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.csv").write_text("image,method,error\na.png,am,\n")
    (run / "summary.csv").write_text("the run's summary")
    assert benchmark.main("benchmark", ["--from-results", str(run / "results.csv"), "--out", str(run)]) == 2
    assert "another --out" in capsys.readouterr().err
    assert (run / "summary.csv").read_text() == "the run's summary"  # nothing written is replaced
    with pytest.raises(SystemExit):
        benchmark.main("benchmark", ["--out", str(tmp_path)])  # neither --images nor --from-results
    assert "--images is required" in capsys.readouterr().err


def test_unknown_method_is_named(setup, tmp_path, capsys):
    photos, weights, _, pool = setup
    with pytest.raises(SystemExit) as stop:
        benchmark.main("benchmark", ["--images", str(photos), "--methods", "saliency,lime", "--out", str(tmp_path)])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "lime" in err and "gradcam" in err


def test_amortized_without_checkpoint_and_unreadable_image_are_named(setup, tmp_path, capsys):
    photos, weights, _, pool = setup
    common = ["--out", str(tmp_path), "--backbone", "test_efficientnet", "--weights", str(weights)]
    with pytest.raises(SystemExit) as stop:
        benchmark.main("benchmark", ["--images", str(photos), "--methods", "am-amortized", *common])
    assert stop.value.code == 2
    assert "--checkpoint" in capsys.readouterr().err
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    assert benchmark.main("benchmark", ["--images", str(broken), "--methods", "saliency", *common]) == 2
    assert "broken.jpg" in capsys.readouterr().err


def test_amortized_scan_refines_am_amortized_and_pairs_it_with_the_baselines(setup, tmp_path, capsys):
    """--scan N gives am-amortized the recipe's Scan (and BorderFree) stages after its pass, recorded in
    settings.json under the recipe's name; without `am` the paired table compares am-amortized with
    every baseline. (What the scan returns is checked in tests/test_amortized_stages.py.)"""
    photos, weights, ckpt, pool = setup
    argv = ["--images", str(photos), "--backbone", "test_efficientnet", "--weights", str(weights), "--checkpoint",
            str(ckpt), "--methods", "am-amortized,gradcam", "--scan", "8", "--border-free", "2", "--out", str(tmp_path),
            *CHEAP]  # fmt: skip
    assert benchmark.main("benchmark", argv) == 0
    settings = json.loads((tmp_path / "settings.json").read_text())["methods"]["am-amortized"]
    assert settings["scan"] == 8 and settings["border_free"] == 2 and settings["recipe"].endswith("+scan8+bf2")
    paired = list(csv.DictReader((tmp_path / "paired.csv").open()))
    assert paired and {(r["reference"], r["baseline"]) for r in paired} == {("am-amortized", "gradcam")}
    classifier = load_classifier("test_efficientnet", str(weights))
    method = benchmark.METHODS["am-amortized"](classifier, checkpoint=str(ckpt), scan=8, border_free=2.0)
    assert [repr(stage) for stage in method.explainer.amortized_stages] == [repr(Scan(areas=8)), repr(BorderFree(factor=2.0))]


def test_scan_without_am_amortized_is_refused_with_the_fix(setup, tmp_path, capsys):
    photos, *_ = setup
    with pytest.raises(SystemExit):
        benchmark.main("benchmark", ["--images", str(photos), "--methods", "gradcam", "--scan", "8", "--out", str(tmp_path)])
    assert "add am-amortized to --methods" in capsys.readouterr().err


def test_registry_names_classes():
    assert set(benchmark.METHODS) >= {"am", "am-amortized", "saliency", "gradcam", "occlusion", "ig", "rise", "convad", "ep"}


def test_am_runs_first_so_that_its_area_sets_the_cut():
    assert benchmark.parse_methods("saliency,am,rise,saliency", None) == ["am", "saliency", "rise"]


def test_am_takes_an_explainer_config(tmp_path):
    """--config sets am's recipe (U-Net, lr, loss terms) while the benchmark's classifier is kept."""
    config = tmp_path / "am.yaml"
    config.write_text(
        "lr: 0.005\n"
        "unet: {class_path: actmatch.explainers.unet.MaskUNet, init_args: {width: 4, depth: 2, padding_mode: replicate}}\n"
    )
    classifier = load_classifier("test_efficientnet", pretrained=False)
    method = benchmark.METHODS["am"](classifier, steps=2, config=str(config))
    assert method.explainer.classifier is classifier
    assert method.explainer.lr == 0.005 and method.explainer.unet.padding_mode == "replicate"
    maps = method.attribute(torch.rand(1, 3, 40, 48))
    assert maps.shape == (1, 1, 40, 48)


def test_benchmark_logs_its_tables_to_an_offline_wandb_run(setup, tmp_path):
    """--wandb without WANDB_MODE: an offline run in OUT/wandb with the summary, paired and gallery tables.

    In a subprocess, as a user runs it: W&B's service outlives a run in the process that
    started it, and would carry this test's settings into later tests' runs."""
    import json
    import os
    import subprocess
    import sys

    photos, weights, _, pool = setup
    env = {k: v for k, v in os.environ.items() if k != "WANDB_MODE"}
    env.update(WANDB_SILENT="true", WANDB_DATA_DIR=str(tmp_path / "wandb-data"))  # artifact staging, off the home folder
    argv = ["--images", str(photos), "--methods", "am,saliency,gradcam", "--out", "out", "--backbone", "test_efficientnet",
            "--weights", str(weights), "--wandb", *CHEAP]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "actmatch.cli", "benchmark", *argv],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    runs = list((tmp_path / "out" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    tables = {p.name.split("_")[0]: p for p in (runs[0] / "files" / "media" / "table" / "benchmark").glob("*.table.json")}
    assert set(tables) == {"summary", "paired", "gallery"}
    summary = json.loads(tables["summary"].read_text())
    assert summary["columns"] == benchmark.SUMMARY_FIELDS and [r[0] for r in summary["data"]] == ["am", "saliency", "gradcam"]
    assert "kept_equal_area_ci_low" in summary["columns"]
    paired = json.loads(tables["paired"].read_text())
    assert paired["columns"] == benchmark.PAIRED_FIELDS and len(paired["data"]) == 2 * len(benchmark.PAIRED_METRICS)
    gallery = json.loads(tables["gallery"].read_text())
    assert gallery["columns"][:4] == ["image", "method", "label_name", "map"] and len(gallery["data"]) == 2 * 3
    assert (runs[0] / f"run-{runs[0].name.rsplit('-', 1)[-1]}.wandb").read_bytes().count(b"media/images/") >= 6  # the maps
    assert "W&B run" in done.stdout


def test_a_map_that_cannot_be_scored_fails_alone():
    """All maps of an image are scored together; a bad one is found and only its row gets the error."""
    classifier = load_classifier("test_resnet", pretrained=False)
    item = BenchImage("one.png", torch.rand(3, 40, 40))
    logits = classifier(item.image[None])
    maps = {"good": torch.rand(1, 1, 40, 40), "bad": torch.rand(1, 1, 20, 20), "also_good": torch.rand(1, 1, 40, 40)}
    counter = PassCounter()
    settings = {"steps": 2, "tau": 0.5, "seed": 0, "chunk": 8}
    scores = score_image(classifier, item, maps, logits, 0.2, default_exam(None), settings, counter)
    assert isinstance(scores["bad"], ValueError) and "maps must be" in str(scores["bad"])
    assert set(scores["good"]) == set(scores["also_good"]) >= {"robust_sufficient_area", "robust_road", "dg_score"}
    assert counter.images > 0


def test_run_settings_name_a_changed_am_recipe(tmp_path):
    """A changed fitting config of `am` (here: its lookahead) counts as other settings for --resume; settings.json
    names am's recipe (the built-in one is the faithful preset) beside its digest."""
    classifier = load_classifier("resnet10t", pretrained=False, num_classes=5)
    config = tmp_path / "am.yaml"
    config.write_text(
        "model:\n  init_args:\n    fitting:\n      class_path: actmatch.explainers.fitting.AreaContinuation\n"
        "      init_args: {lookahead: 4}\n"
    )

    def settings(*extra):
        args = benchmark.parse_args("benchmark", ["--images", str(tmp_path), "--out", str(tmp_path), *extra])
        return benchmark.run_settings(args, {"am": benchmark.ActMatchMethod(classifier, config=args.config)}, classifier, "exam")

    saved = tmp_path / "settings.json"
    saved.write_text(json.dumps(settings()))
    am = json.loads(saved.read_text())["methods"]["am"]
    assert (am["recipe"], am["recipe_version"], len(am["recipe_digest"])) == ("faithful", 4, 8)
    assert benchmark.settings_changes(saved, settings()) == []
    assert benchmark.settings_changes(saved, settings("--config", str(config))) == [
        "methods.am.recipe",
        "methods.am.recipe_version",
        "methods.am.recipe_digest",
    ]  # a config without a name: custom
    assert benchmark.settings_changes(tmp_path / "missing.json", settings()) == []  # an older run: nothing to compare


def test_run_settings_name_the_arithmetic_and_resume_refuses_another_thread_count(tmp_path):
    """settings.json says where the run's arithmetic ran; with another thread count `am`'s fits can end elsewhere,
    so the run's settings and am's digest both count as changed for --resume."""
    classifier = load_classifier("resnet10t", pretrained=False, num_classes=5)

    def settings():
        args = benchmark.parse_args("benchmark", ["--images", str(tmp_path), "--out", str(tmp_path)])
        return benchmark.run_settings(args, {"am": benchmark.ActMatchMethod(classifier)}, classifier, "exam")

    saved = tmp_path / "settings.json"
    with torch_threads(2):
        saved.write_text(json.dumps(settings()))
    assert json.loads(saved.read_text())["arithmetic"] == f"cpu, 2 threads, torch {torch.__version__}"
    with torch_threads(1):
        assert settings()["arithmetic"] == f"cpu, 1 thread, torch {torch.__version__}"
        assert benchmark.settings_changes(saved, settings()) == ["arithmetic", "methods.am.recipe_digest"]


def test_sufficient_area_with_cut_takes_the_equal_area_cut_when_it_keeps_the_label():
    """The scan can miss a two-part map's own mask; the equal-area cut is one more candidate, for every method."""
    missed = {"smallest_sufficient_area": "0.956", "area": "0.109", "kept_equal_area": "1"}
    assert sufficient_with_cut(missed) == pytest.approx(0.109)
    lost = {"smallest_sufficient_area": "0.08", "area": "0.03", "kept_equal_area": "0"}
    assert sufficient_with_cut(lost) == pytest.approx(0.08)
    found = {"smallest_sufficient_area": 0.02, "area": 0.03, "kept_equal_area": 1}
    assert sufficient_with_cut(found) == pytest.approx(0.02)
    rows = add_derived([dict(missed), {"image": "x", "error": "RuntimeError: failed"}])
    assert rows[0]["sufficient_area_with_cut"] == pytest.approx(0.109) and "sufficient_area_with_cut" not in rows[1]


def _rows(values: dict[str, list[float]], column: str) -> list[dict]:
    """results.csv-like rows: one per image and method, ``column`` set from ``values[method]``."""
    return [
        {"image": f"{i}.png", "method": method, "error": "", column: v} for method, vs in values.items() for i, v in enumerate(vs)
    ]


def test_the_paired_table_never_counts_a_column_true_by_construction():
    """am keeps the label at its own area on every image (its mask is the equal-area cut): the row is shown, not tested."""
    rows = _rows({"am": [1.0] * 12, "gradcam": [0.0] * 12}, "kept_equal_area")
    for r in rows:
        r["robust_sufficient_area"] = 0.1 if r["method"] == "am" else 0.3  # an exam column am wins on every image
    paired = compare_pairs(rows)
    construction = [r for r in paired if r["metric"] == "kept_equal_area"]
    assert construction and all(r["wins"] == 12 and math.isnan(r["p_value"]) and not r["significant"] for r in construction)
    robust = next(r for r in paired if r["metric"] == "robust_sufficient_area")
    assert robust["significant"] and robust["p_holm"] >= robust["p_value"]
    # the size of the gap: am − gradcam = 0.1 − 0.3 on every image (a median column), a zero-width interval
    assert (robust["difference"], robust["difference_ci_low"], robust["difference_ci_high"]) == pytest.approx((-0.2,) * 3)
    assert "-0.200 [-0.200, -0.200]" in format_paired(paired)
    text = headline(paired)
    assert "better than every baseline (gradcam) on robust.area" in text
    assert "kept@area" not in text  # the headline is computed from exam columns only


def test_holm_corrects_over_every_counted_comparison():
    """Two exam columns, one baseline: p(Holm) of the smaller p is 2 x p (m = 2)."""
    rows = _rows(
        {"am": [0.1, 0.2, 0.1, 0.3, 0.2, 0.1, 0.2, 0.1, 0.3, 0.2, 0.1, 0.2], "rise": [0.3] * 12}, "robust_sufficient_area"
    )
    for r in rows:
        r["dg_score"] = -1.0 if r["method"] == "am" else 0.5
    paired = [r for r in compare_pairs(rows) if r["n"]]
    assert len(paired) == 2
    smaller = min(paired, key=lambda r: r["p_value"])
    assert smaller["p_holm"] == pytest.approx(min(1.0, 2 * smaller["p_value"]))


def test_a_recipe_that_fits_on_a_held_out_exam_family_is_refused(setup, tmp_path, capsys):
    """Photos (a fit's `shuffle` backgrounds) are held out: a recipe whose robustness term draws them is refused by name."""
    photos, weights, _, pool = setup
    config = tmp_path / "photo_fit.yaml"
    config.write_text(
        "losses:\n  - {class_path: actmatch.explainers.losses.CrossEntropy, init_args: {weight: 1.0}}\n"
        "  - {class_path: actmatch.explainers.losses.Robustness, init_args: {weight: 1.0, backgrounds: [shuffle]}}\n"
    )
    argv = ["--images", str(photos), "--methods", "am,saliency", "--out", str(tmp_path / "out"),
            "--backbone", "test_efficientnet", "--weights", str(weights), "--config", str(config),
            "--exam-photos", str(pool), *CHEAP]  # fmt: skip
    assert benchmark.main("benchmark", argv) == 2
    err = capsys.readouterr().err
    assert "held-out exam family photos (losses: robustness)" in err
    assert not (tmp_path / "out" / "results.csv").exists()


def test_exam_seed_and_photo_pool_must_be_disjoint_from_the_fit(setup, tmp_path, capsys):
    photos, weights, _, pool = setup
    common = ["--images", str(photos), "--methods", "saliency", "--out", str(tmp_path), "--backbone", "test_efficientnet",
              "--weights", str(weights)]  # fmt: skip
    with pytest.raises(SystemExit):
        benchmark.main("benchmark", [*common, "--seed", "5", "--exam-seed", "5"])
    assert "--exam-seed must differ from --seed" in capsys.readouterr().err
    assert benchmark.main("benchmark", [*common, "--exam-photos", str(photos)]) == 2  # the explained images as backgrounds
    assert "holds 2 of the explained images" in capsys.readouterr().err


def test_reuse_maps_takes_unchanged_methods_from_an_earlier_run(setup, tmp_path, capsys):
    """A second run with --reuse-maps computes no map again for a method whose settings did not change,
    and its rows equal the first run's; a method with other settings is computed again."""
    photos, weights, _, pool = setup
    common = ["--images", str(photos), "--backbone", "test_efficientnet", "--weights", str(weights), "--exam-photos",
              str(pool), *CHEAP]  # fmt: skip
    first, second = tmp_path / "first", tmp_path / "second"
    assert benchmark.main("benchmark", ["--methods", "saliency,occlusion", "--out", str(first), *common]) == 0
    capsys.readouterr()
    argv = ["--methods", "saliency,occlusion", "--out", str(second), "--reuse-maps", str(first), *common, "--window", "16"]
    assert benchmark.main("benchmark", argv) == 0
    assert "reuse: the maps of saliency from" in capsys.readouterr().err  # occlusion's window changed
    ours = {(r["image"], r["method"]): r for r in csv.DictReader((second / "results.csv").open())}
    for r in csv.DictReader((first / "results.csv").open()):
        if r["method"] == "saliency":  # the same map, seconds and sanity check, so the same row
            assert ours[(r["image"], r["method"])] == r
    assert benchmark.main("benchmark", ["--methods", "saliency", "--out", str(tmp_path / "x"), "--reuse-maps", str(tmp_path),
                                        *common]) == 2  # fmt: skip
    assert "not a benchmark output folder" in capsys.readouterr().err
