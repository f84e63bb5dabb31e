"""Every file in experiments/ runs through ``actmatch fit`` (one step, fast_dev_run-like, on CPU).

Files that need ImageNet or hub weights run against small local stand-ins: a random-init
backbone saved to tmp_path and a tiny fake ImageNet folder. Ablation/backbone/override files
(``# base: FILE`` on their first line) run on top of their base.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
import yaml

from actmatch.explainers.classifier import OFFLINE_DEFAULTS, load_classifier
from lightning_helpers import ROOT, cli_in_process, fake_imagenet, save_random_weights, write_mask_targets

EXPERIMENTS = ROOT / "experiments"
# experiments/explain/ holds per-image fit recipes (actmatch explain|study --config), tested below
EXPLAIN_FILES = sorted(p.relative_to(ROOT).as_posix() for p in (EXPERIMENTS / "explain").rglob("*.yaml"))
# configs for `actmatch predict` (per-image fits of a folder; run end to end in tests/test_predict_writer.py)
PREDICT_FILES = ["experiments/explain_folder.yaml"]
ALL_FILES = sorted(
    p.relative_to(ROOT).as_posix()
    for p in EXPERIMENTS.rglob("*.yaml")
    if p.name != "sweep.yaml" and p.relative_to(ROOT).as_posix() not in EXPLAIN_FILES + PREDICT_FILES
)


def base_of(path: str) -> list[str]:
    """The config chain of a file: ``[base, file]`` for override files, else ``[file]``."""
    first = (ROOT / path).read_text().splitlines()[0]
    if first.startswith("# base:"):
        return [first.split(":", 1)[1].strip(), path]
    return [path]


def merged(chain: list[str]) -> dict:
    """Naive merge of the chain's YAML, enough to read backbone / data class / weights."""
    out: dict = {}

    def merge(a: dict, b: dict) -> dict:
        for k, v in b.items():
            a[k] = merge(dict(a.get(k) or {}), v) if isinstance(v, dict) and isinstance(a.get(k), dict) else v
        return a

    for path in chain:
        out = merge(out, yaml.safe_load((ROOT / path).read_text()) or {})
    return out


def stand_in_args(chain: list[str], tmp_path: Path) -> list[str]:
    """CLI overrides that make the chain run fast, offline, on tiny local data."""
    config = merged(chain)
    model, data = config["model"]["init_args"], config["data"]
    # like fast_dev_run (one train and one val batch), which LightningCLI would not save the config for
    args = [
        "--trainer.max_epochs",
        "1",
        "--trainer.max_steps",
        "1",
        "--trainer.limit_train_batches",
        "1",
        "--trainer.limit_val_batches",
        "1",
        "--trainer.val_check_interval",
        "1.0",
        "--trainer.num_sanity_val_steps",
        "0",
        "--trainer.logger",
        "false",
        "--trainer.accelerator",
        "cpu",
        "--trainer.devices",
        "1",
        "--trainer.default_root_dir",
        str(tmp_path),
        "--trainer.enable_progress_bar",
        "false",
        "--data.init_args.batch_size",
        "2",
    ]
    if data["class_path"].endswith("SyntheticDataModule"):
        args += [
            "--data.init_args.train_size",
            "4",
            "--data.init_args.val_size",
            "2",
            "--data.init_args.test_size",
            "2",
            "--data.init_args.image_size",
            "48",
        ]
    if data["class_path"].endswith("ImageNetDataModule"):
        flat = "imagenet-sample" in str(data["init_args"].get("root")) or data["init_args"].get("mask_targets")
        layout = "flat" if flat else "split"  # flat: one mask.png per file stem
        root = fake_imagenet(tmp_path / "imagenet", layout=layout, per_class=1)
        args += ["--data.init_args.root", str(root), "--data.init_args.image_size", "64", "--data.init_args.num_workers", "0"]
        if data["init_args"].get("mask_targets"):  # a stand-in mask.png per photo, where `actmatch explain` writes it
            masks = write_mask_targets(sorted(root.rglob("*.JPEG")), tmp_path / "mask_targets")
            args += ["--data.init_args.mask_targets", str(masks), "--data.init_args.val_fraction", "0.5"]
    if config["model"]["class_path"].endswith("ClassifierTrainer"):
        args += ["--model.init_args.export_path", str(tmp_path / "classifier.safetensors")]
        return args
    backbone = model["backbone"]
    needs_weights = model.get("weights") is not None or (model.get("pretrained", True) and backbone not in OFFLINE_DEFAULTS)
    if needs_weights:  # a trained or hub checkpoint: random-init stand-in of the same architecture
        weights = save_random_weights(backbone, tmp_path / f"{backbone}.safetensors", model.get("num_classes"))
        args += ["--model.init_args.weights", str(weights)]
    unet = (model.get("unet") or {}).get("init_args") or {}
    if unet.get("working_size"):
        args += ["--model.init_args.unet.init_args.working_size", "32"]
    return args


def test_experiment_files_exist():
    names = set(ALL_FILES)
    for required in (
        "experiments/smoke.yaml",
        "experiments/paper_resnet18.yaml",
        "experiments/efficientnet_lite0.yaml",
        "experiments/synthetic_classifier.yaml",
        "experiments/synthetic_explainer.yaml",
    ):
        assert required in names
    assert (EXPERIMENTS / "sweep.yaml").is_file() and (EXPERIMENTS / "README.md").is_file()
    assert any(n.startswith("experiments/ablations/") for n in names) and any(
        n.startswith("experiments/backbones/") for n in names
    )


@pytest.mark.parametrize("path", ALL_FILES + PREDICT_FILES)
def test_every_experiment_parses_with_print_config(path):
    chain = base_of(path)
    argv = [a for p in chain for a in ("--config", p)] + ["--print_config"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.chdir(ROOT):
        code = cli_in_process("predict" if path in PREDICT_FILES else "fit", argv)
    assert code == 0
    printed = yaml.safe_load(out.getvalue())
    assert printed["model"]["class_path"] and printed["data"]["class_path"]


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: p.removeprefix("experiments/"))
def test_every_experiment_runs_fast_dev_run(path, tmp_path):
    chain = base_of(path)
    argv = [a for p in chain for a in ("--config", p)] + stand_in_args(chain, tmp_path)
    with contextlib.chdir(ROOT):
        assert cli_in_process("fit", argv) == 0
    config_files = list(tmp_path.rglob("config.yaml"))
    assert config_files, "the resolved config was not saved beside the run"
    if "synthetic_classifier" in path:  # the exported classifier loads as an explainer backbone
        saved = yaml.safe_load(config_files[0].read_text())["model"]["init_args"]
        load_classifier(
            saved["backbone"], weights=tmp_path / "classifier.safetensors", pretrained=False, num_classes=saved["num_classes"]
        )


def test_loss_weight_flags_set_the_listed_terms(tmp_path):
    chain = ["experiments/smoke.yaml"]
    argv = ["--config", chain[0], *stand_in_args(chain, tmp_path), "--loss_weights.area", "9.5", "--loss_weights.robustness", "0"]
    with contextlib.chdir(ROOT):
        assert cli_in_process("fit", argv) == 0
    saved = yaml.safe_load(next(tmp_path.rglob("config.yaml")).read_text())
    weights = {t["class_path"].rsplit(".", 1)[-1]: t["init_args"]["weight"] for t in saved["model"]["init_args"]["losses"]}
    assert weights["Area"] == 9.5 and weights["Robustness"] == 0.0 and weights["CrossEntropy"] == 1.0


def test_loss_weight_flag_for_an_absent_term_is_an_error(tmp_path):
    argv = [
        "--config",
        "experiments/smoke.yaml",
        *stand_in_args(["experiments/smoke.yaml"], tmp_path),
        "--loss_weights.necessity",
        "1",
    ]
    with contextlib.chdir(ROOT), pytest.raises(ValueError, match="no Necessity term"):
        cli_in_process("fit", argv)


def test_sweep_drives_the_cli(tmp_path):
    """Build one run of experiments/sweep.yaml's command (as a W&B agent would) and run it."""
    sweep = yaml.safe_load((EXPERIMENTS / "sweep.yaml").read_text())
    assert sweep["program"] == "actmatch"
    args = []
    for name, spec in sweep["parameters"].items():
        value = spec["values"][0] if "values" in spec else spec["min"]
        args.append(f"--{name}={value}")
    command = [a for part in sweep["command"] for a in (args if part == "${args}" else [part])]
    assert command[:2] == ["${program}", "fit"]
    chain = [command[command.index("--config") + 1]]
    argv = command[2:] + stand_in_args(chain, tmp_path)
    with contextlib.chdir(ROOT):
        assert cli_in_process("fit", argv) == 0


@pytest.fixture(scope="module")
def tiny_classifier():
    return load_classifier("resnet10t", pretrained=False, num_classes=5)


@pytest.mark.parametrize("path", EXPLAIN_FILES, ids=lambda p: p.removeprefix("experiments/explain/"))
def test_every_explain_recipe_fits(path, tiny_classifier):
    """Each study row's config builds its explainer and fits 2 steps (tiny classifier stand-in)."""
    import torch

    from actmatch.commands.explain import build_explainer

    explainer = build_explainer(str(ROOT / path), steps=2, classifier=tiny_classifier)
    result = explainer.fit_images(torch.rand(1, 3, 48, 56), seed=0)
    assert result.masks.shape == (1, 1, 48, 56)
    assert set(result.masks.unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("path", sorted((EXPERIMENTS / "explain").glob("*.yaml")), ids=lambda p: p.name)
def test_every_preset_goes_by_its_file_name_and_a_version(path):
    """``--preset NAME`` results say ``recipe: NAME`` and the preset's version (a config without them is custom)."""
    init = yaml.safe_load(path.read_text())["model"]["init_args"]
    assert init["recipe"] == path.stem and isinstance(init["recipe_version"], int) and init["recipe_version"] >= 1


@pytest.mark.parametrize("path", ["experiments/explain/faithful.yaml", "experiments/explain_folder.yaml"])
def test_the_default_recipe_files_are_the_built_in_default(path, tiny_classifier):
    """``--preset faithful`` and ``actmatch predict --config experiments/explain_folder.yaml`` spell out the
    built-in default (``actmatch explain`` without a config): the same loss terms, fitting strategy and
    settings, U-Net and steps, so a change of the default cannot miss one of them; and they go by the
    built-in recipe's name and version."""
    from actmatch.commands.explain import build_explainer
    from actmatch.explainers.module import DEFAULT_RECIPE, DEFAULT_RECIPE_VERSION, ActMatchExplainer
    from actmatch.results import recipe_digest

    from_file = build_explainer(str(ROOT / path), classifier=tiny_classifier)
    built_in = ActMatchExplainer(classifier=tiny_classifier)
    assert repr(from_file.fitting) == repr(built_in.fitting)
    assert recipe_digest(from_file, None, 0) == recipe_digest(built_in, None, 0)
    names = [(e.recipe, e.recipe_version) for e in (from_file, built_in)]
    assert names == [(DEFAULT_RECIPE, DEFAULT_RECIPE_VERSION)] * 2
