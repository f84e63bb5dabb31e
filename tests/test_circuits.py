"""Circuit readout: nodes, edge scorings, class links, ablation, files, drawings, CLI, callback."""

from __future__ import annotations

import json

import networkx as nx
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from actmatch.explainers.circuits import (
    PRE_LOGITS,
    CircuitReader,
    MeanAblation,
    NotLinkableError,
    ablated,
    circuit_channels,
    compare_circuits,
    draw_circuit,
    draw_comparison,
    find_ingress,
    read_graphml,
    read_json,
    write_graphml,
    write_json,
)
from actmatch.explainers.circuits.nodes import Site, resolve_counts
from actmatch.explainers.classifier import FrozenClassifier
from actmatch.explainers.taps import hook_count


class TinyCNN(nn.Module):
    """conv(3→4, 3×3) → ReLU → conv(4→6, 3×3) → ReLU(inplace) → conv(6→5, 1×1) → ReLU → avgpool → fc(5→3)."""

    num_classes = 3

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.act1 = nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()
        self.conv2, self.act2 = nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(inplace=True)
        self.conv3, self.act3 = nn.Conv2d(6, 5, 1), nn.ReLU()
        self.pool, self.flatten, self.fc = nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3)
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():  # known weights; positive biases keep most units active
            for conv in (self.conv1, self.conv2, self.conv3, self.fc):
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * 0.5)
                conv.bias.copy_(torch.rand(conv.bias.shape, generator=generator) * 0.2 + 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.fc(self.flatten(self.pool(self.act3(self.conv3(x)))))


class ResidualCNN(TinyCNN):
    """Same layers, but act2's output is added to act1's (a residual join)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.act1(self.conv1(x))
        b = self.act2(self.conv2(a)) + a
        return self.fc(self.flatten(self.pool(b[:, :1].repeat(1, 5, 1, 1))))


TAPS = ["act1", "act2", "act3"]


@pytest.fixture()
def tiny() -> FrozenClassifier:
    return FrozenClassifier(TinyCNN(), "tiny")


@pytest.fixture()
def image() -> torch.Tensor:
    return torch.rand(1, 3, 12, 12, generator=torch.Generator().manual_seed(1))


def _by_hand(model: TinyCNN, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Activations computed directly, without any circuit code."""
    with torch.no_grad():
        a1 = torch.relu(model.conv1(x))
        a2 = torch.relu(model.conv2(a1))
        a3 = torch.relu(model.conv3(a2))
    return {"act1": a1[0], "act2": a2[0], "act3": a3[0], PRE_LOGITS: a3[0].mean((1, 2))[:, None, None]}


def test_nodes_are_the_most_energetic_channels(tiny, image):
    graph = CircuitReader(tiny, TAPS, k=2, rank="energy").read(image)
    acts = _by_hand(tiny.model, tiny.normalize(image))
    for layer, channels in circuit_channels(graph).items():
        expected = acts[layer].abs().flatten(1).mean(1).argsort(descending=True)[:2].tolist()
        assert channels == expected
        for c in channels:
            assert graph.nodes[f"{layer}:{c}"]["activation"] == pytest.approx(float(acts[layer][c].mean()), rel=1e-5)


def test_weight_edges_equal_sum_abs_kernel_times_activation(tiny, image):
    graph = CircuitReader(tiny, TAPS, k=3, scoring="weight", rank="energy").read(image)
    acts = _by_hand(tiny.model, tiny.normalize(image))
    pairs = [("act1", "act2", tiny.model.conv2), ("act2", "act3", tiny.model.conv3)]
    checked = 0
    for source, target, conv in pairs:
        for u, v, data in graph.edges(data=True):
            if u.startswith(source + ":") and v.startswith(target + ":"):
                i, j = int(u.split(":")[1]), int(v.split(":")[1])
                expected = conv.weight[j, i].abs().sum() * acts[source][i].mean()
                assert data["score"] == pytest.approx(float(expected), rel=1e-5)
                assert data["scoring"] == "weight"
                checked += 1
    assert checked == 2 * 9
    # act3 -> pre_logits is pooling only: the identity map, score = activation on the diagonal
    links = [(u, v, d) for u, v, d in graph.edges(data=True) if v.startswith(PRE_LOGITS)]
    assert links and all(u.split(":")[1] == v.split(":")[1] for u, v, _ in links)


def test_class_links_are_abs_fc_weight_times_feature(tiny, image):
    graph = CircuitReader(tiny, TAPS, k={"act1": 2, PRE_LOGITS: 5}, top_classes=2, rank="energy").read(image)
    acts = _by_hand(tiny.model, tiny.normalize(image))
    classes = [n for n, d in graph.nodes(data=True) if d["kind"] == "class"]
    assert len(classes) == 2 and graph.nodes[classes[0]]["channel"] == graph.graph["label"]
    for u, v, data in graph.edges(data=True):
        if data["kind"] == "class_link":
            i, c = int(u.split(":")[1]), int(v.split(":")[1])
            expected = tiny.model.fc.weight[c, i].abs() * acts[PRE_LOGITS][i, 0, 0]
            assert data["score"] == pytest.approx(float(expected), rel=1e-5)


def test_gradient_scoring_matches_weight_scoring_for_a_linear_1x1_link():
    model = TinyCNN()
    model.act3 = nn.Identity()  # act2 -> conv3 (1×1) -> identity: ∂ā_j/∂a_i summed = |W[j, i]|
    classifier = FrozenClassifier(model, "tiny")
    x = torch.rand(1, 3, 8, 8)
    weight = CircuitReader(classifier, TAPS, k=4, scoring="weight").read(x, test=False)
    gradient = CircuitReader(classifier, TAPS, k=4, scoring="gradient").read(x, test=False)
    for u, v, data in weight.edges(data=True):
        if u.startswith("act2:"):
            assert gradient.edges[u, v]["score"] == pytest.approx(data["score"], rel=1e-4)


def test_keeping_every_channel_reproduces_the_logits_exactly(tiny, image):
    reader = CircuitReader(tiny, TAPS, k=1.0)
    acts = reader.activations(image)
    keep = reader.keep(acts, image=image)
    assert all(mask.all() for mask in keep.values())
    with torch.no_grad():
        expected = tiny(image)
        for ablation in ("zero", "mean"):
            with ablated(tiny, keep, ablation):
                assert torch.equal(tiny(image), expected)
    assert reader.faithfulness(image).label_kept


def test_ablation_changes_the_output_and_search_finds_a_keeping_fraction(tiny, image):
    reader = CircuitReader(tiny, TAPS)
    acts = reader.activations(image)
    keep = reader.keep(acts, 1, image)
    with torch.no_grad(), ablated(tiny, keep, "zero"):
        ablated_logits = tiny(image)
    assert not torch.equal(ablated_logits, tiny(image))
    found = reader.search(image, fractions=(0.2, 0.5, 1.0))
    assert found.label_kept and found.fraction in (0.2, 0.5, 1.0)
    kept = [fraction for fraction, ok, _ in found.trials if ok]
    assert kept == [found.fraction]  # stops at the first keeping fraction
    bisect = reader.search(image, method="bisect", tolerance=0.1)
    assert bisect.label_kept and 0 < bisect.fraction <= 1


def test_mean_ablation_uses_reference_means(tiny, image):
    means = MeanAblation.from_images(tiny, [image, torch.rand(1, 3, 12, 12)], TAPS)
    assert set(means.means) == set(TAPS) and means.means["act2"].shape == (6,)
    keep = {"act2": torch.tensor([True, False, True, True, True, True])}
    captured = {}
    handle = tiny.model.act3.register_forward_hook(lambda m, i, o: captured.setdefault("in", i[0].clone()))
    try:
        with torch.no_grad(), ablated(tiny, keep, means):
            tiny(image)
    finally:
        handle.remove()
    # conv3 saw channel 1 replaced by its reference mean: recompute conv3 on the ablated act2
    acts = _by_hand(tiny.model, tiny.normalize(image))
    a2 = acts["act2"].clone()
    a2[1] = means.means["act2"][1]
    expected = tiny.model.conv3(a2[None])
    assert torch.allclose(captured["in"], expected, atol=1e-6)


def test_hooks_are_removed_also_after_errors(tiny, image):
    before = hook_count(tiny)
    CircuitReader(tiny, TAPS, k=2, scoring="gradient").read(image)
    CircuitReader(tiny, TAPS, k=2, scoring="weight").read(image)
    assert hook_count(tiny) == before
    with pytest.raises(RuntimeError, match="boom"), ablated(tiny, {"act1": torch.ones(4, dtype=torch.bool)}):
        assert hook_count(tiny) > before
        raise RuntimeError("boom")
    bad_keep = {"act1": torch.ones(7, dtype=torch.bool)}  # wrong channel count: fails inside the forward
    with pytest.raises(ValueError, match="shape"), ablated(tiny, bad_keep):
        tiny(image)
    assert hook_count(tiny) == before
    residual = FrozenClassifier(ResidualCNN(), "res")
    with pytest.raises(NotLinkableError):
        CircuitReader(residual, ["act1", "act2"], k=2, scoring="weight").read(image)
    assert hook_count(residual) == 0


def test_bad_inputs_give_clear_errors(tiny, image):
    with pytest.raises(ValueError, match=r"unknown layer.*valid names:.*act1"):
        CircuitReader(tiny, ["act1", "nope"])
    with pytest.raises(ValueError, match=r"k=9 is larger than the 4 channels of layer 'act1'"):
        CircuitReader(tiny, TAPS, k=9).read(image)
    with pytest.raises(ValueError, match="fraction"):
        resolve_counts(1.5, {"a": 4})
    with pytest.raises(ValueError, match="unknown edge scoring"):
        CircuitReader(tiny, TAPS, scoring="magic")
    with pytest.raises(ValueError, match="one image at a time"):
        CircuitReader(tiny, TAPS).read(torch.rand(2, 3, 12, 12))
    residual = FrozenClassifier(ResidualCNN(), "res")
    with pytest.raises(NotLinkableError, match=r"scoring='gradient'"):
        CircuitReader(residual, ["act1", "act2"], k=2, scoring="weight").read(image)
    # gradient and auto scoring still work where weight scoring does not apply
    graph = CircuitReader(residual, ["act1", "act2"], k=2, scoring="auto").read(image)
    scorings = {d["scoring"] for _, _, d in graph.edges(data=True)}
    assert "gradient" in scorings


def test_ingress_detection(tiny, image):
    out = lambda name: Site(name, name)  # noqa: E731
    ingress = find_ingress(tiny, image, out("act1"), out("act2"))
    assert ingress.kind == "conv" and ingress.module == "conv2" and ingress.matrix.shape == (6, 4)
    with pytest.raises(NotLinkableError, match="more than one"):
        find_ingress(tiny, image, out("act1"), out("act3"))


def test_grouped_conv_ingress_is_block_diagonal():
    conv = nn.Conv2d(4, 4, 3, groups=2)
    from actmatch.explainers.circuits.edges import ingress_matrix

    matrix = ingress_matrix(conv)
    assert matrix.shape == (4, 4)
    assert torch.all(matrix[:2, 2:] == 0) and torch.all(matrix[2:, :2] == 0)
    assert torch.allclose(matrix[0, 1], conv.weight[0, 1].abs().sum())


def _assert_same_graph(a: nx.DiGraph, b: nx.DiGraph) -> None:
    assert dict(a.nodes(data=True)) == dict(b.nodes(data=True))
    assert set(a.edges) == set(b.edges)
    for u, v, data in a.edges(data=True):
        assert b.edges[u, v] == data
    assert a.graph == b.graph


def test_json_and_graphml_round_trip(tiny, image, tmp_path):
    graph = CircuitReader(tiny, TAPS, k=0.5, top_classes=2).read(image)
    _assert_same_graph(graph, read_json(write_json(graph, tmp_path / "circuit.json")))
    _assert_same_graph(graph, read_graphml(write_graphml(graph, tmp_path / "circuit.graphml")))
    document = json.loads((tmp_path / "circuit.json").read_text())
    assert {"layer", "channel", "activation"} <= set(document["nodes"][0])
    assert document["edges"] and document["class_links"] and "score" in document["edges"][0]


def test_drawings_and_comparison(tiny, image, tmp_path):
    reader = CircuitReader(tiny, TAPS, k=0.5)
    a = reader.read(image, input_name="original")
    b = reader.read(image.flip(-1), input_name="explanation", label=a.graph["label"])
    same = compare_circuits(a, a)
    assert same["jaccard_nodes"] == 1.0 and same["jaccard_edges"] == 1.0
    comparison = compare_circuits(a, b)
    assert 0.0 <= comparison["jaccard_nodes"] <= 1.0
    assert len(comparison["shared_nodes"]) <= min(comparison["nodes_a"], comparison["nodes_b"])
    draw_circuit(a, tmp_path / "circuit.png")
    draw_comparison(a, b, tmp_path / "comparison.png")
    for name in ("circuit.png", "comparison.png"):
        with Image.open(tmp_path / name) as img:
            assert img.size[0] > 100 and img.size[1] > 100


def test_gradient_scoring_on_a_timm_residual_cnn():
    import timm

    model = timm.create_model("resnet18", pretrained=False, num_classes=10)
    classifier = FrozenClassifier(model, "resnet18")
    x = torch.rand(1, 3, 64, 64)
    reader = CircuitReader(classifier, ["layer1", "layer2", "layer3", "layer4"], k=0.05, scoring="gradient")
    graph = reader.read(x)
    assert graph.graph["layers"] == ["layer1", "layer2", "layer3", "layer4", PRE_LOGITS]
    assert graph.graph["counts"]["layer4"] == 26  # ceil(0.05 · 512)
    scores = [d["score"] for _, _, d in graph.edges(data=True) if d["kind"] == "edge"]
    assert scores and all(s > 0 for s in scores)
    assert hook_count(classifier) == 0
    with pytest.raises(NotLinkableError, match="gradient"):
        CircuitReader(classifier, ["layer1", "layer2"], k=2, scoring="weight").read(x)


def test_write_circuit_outputs(tmp_path):
    from actmatch.explainers.circuits import write_circuit_outputs
    from actmatch.explainers.module import ActMatchExplainer

    classifier = FrozenClassifier(TinyCNN(), "tiny")
    explainer = ActMatchExplainer(classifier=classifier, taps=TAPS, steps=2)
    image = torch.rand(1, 3, 16, 16)
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 4:12, 4:12] = 1
    summary = write_circuit_outputs(explainer, image, mask, tmp_path, search=True)
    assert {"circuit_nodes", "circuit_fraction", "circuit_label_kept"} <= set(summary)
    assert isinstance(summary["circuit_nodes"], int) and isinstance(summary["circuit_label_kept"], bool)
    for name in ("circuit.json", "circuit.graphml", "circuit.png", "circuit_comparison.png"):
        assert (tmp_path / name).is_file()
    graph = read_json(tmp_path / "circuit.json")
    assert sum(d["kind"] == "channel" and d["layer"] != PRE_LOGITS for _, d in graph.nodes(data=True)) == summary["circuit_nodes"]


def _tiny_explainer_builder(monkeypatch):
    """Make `actmatch circuit` build its explainer around TinyCNN (no weights, fast)."""
    import actmatch.commands.explain as explain_cmd
    from actmatch.explainers.module import ActMatchExplainer

    def build(config=None, backbone=None, weights=None, steps=None, **overrides):
        return ActMatchExplainer(classifier=FrozenClassifier(TinyCNN(), "tiny"), taps=TAPS, steps=steps or 2)

    monkeypatch.setattr(explain_cmd, "build_explainer", build)


def test_circuit_command_end_to_end(tmp_path, monkeypatch, capsys):
    from actmatch.cli import main

    _tiny_explainer_builder(monkeypatch)
    good = tmp_path / "good.png"
    Image.fromarray((np.random.default_rng(0).random((40, 50, 3)) * 255).astype(np.uint8)).save(good)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    out = tmp_path / "out"
    rc = main(["circuit", str(good), str(bad), "--out", str(out), "--steps", "2", "--search"])
    assert rc == 1  # one image failed, the other still ran
    assert "broken.png" in capsys.readouterr().err
    for name in ("circuit.json", "circuit.graphml", "circuit.png", "circuit_comparison.png", "mask.png"):
        assert (out / "good" / name).is_file()
    rows = (out / "circuits.csv").read_text().splitlines()
    assert len(rows) == 3 and ",ok," in rows[1] and "error" in rows[2]
    # reuse the mask just written
    rc = main(
        [
            "circuit",
            str(good),
            "--out",
            str(tmp_path / "again"),
            "--masks-from",
            str(out),
            "--fraction",
            "0.5",
            "--ablation",
            "mean",
        ]
    )
    assert rc == 0
    assert "mask.png" in (tmp_path / "again" / "circuits.csv").read_text()


def test_circuit_command_bad_arguments(tmp_path, monkeypatch, capsys):
    from actmatch.cli import main

    _tiny_explainer_builder(monkeypatch)
    with pytest.raises(SystemExit):
        main(["circuit", "x.png", "--fraction", "2"])
    with pytest.raises(SystemExit):
        main(["circuit", "x.png", "--masks-from", str(tmp_path / "missing")])
    assert main(["circuit", str(tmp_path / "x.png"), "--out", str(tmp_path), "--taps", "nope"]) == 2
    assert "valid names" in capsys.readouterr().err


class _RecordingWandb:
    """Stands in for WandbLogger (isinstance passes) without starting wandb."""

    @staticmethod
    def make():
        from lightning.pytorch.loggers import WandbLogger

        class Recording(WandbLogger):
            def __init__(self) -> None:  # no wandb run
                self.logged = []

            def log_metrics(self, metrics, step=None) -> None:
                self.logged.append((metrics, step))

        return Recording()


def test_circuit_callback_logs_image_and_table_to_wandb_only(tiny):
    from types import SimpleNamespace

    import wandb
    from lightning.pytorch.loggers import CSVLogger

    from actmatch.callbacks.circuit import EDGE_COLUMNS, CircuitGraphs
    from actmatch.explainers.module import ActMatchExplainer

    module = ActMatchExplainer(classifier=tiny, taps=TAPS, steps=2)
    with torch.inference_mode():  # as in Lightning's validation loop
        images = torch.rand(2, 3, 16, 16)
        masks = (torch.rand(2, 1, 16, 16) > 0.3).float()
        outputs = {"images": images, "masks": masks, "explanations": images * masks, "target": torch.tensor([0, 1])}
    wandb_logger = _RecordingWandb.make()
    trainer = SimpleNamespace(is_global_zero=True, loggers=[wandb_logger], sanity_checking=False, current_epoch=0, global_step=7)
    callback = CircuitGraphs(k=2)
    before = hook_count(tiny)
    callback.on_validation_batch_end(trainer, module, outputs, None, 0)
    assert hook_count(tiny) == before
    ((metrics, step),) = wandb_logger.logged
    assert step == 7
    assert isinstance(metrics["val/circuit"], wandb.Image)
    table = metrics["val/circuit_edges"]
    assert isinstance(table, wandb.Table) and table.columns == EDGE_COLUMNS and len(table.data) > 0
    callback.on_validation_batch_end(trainer, module, outputs, None, 1)  # not the first batch
    assert len(wandb_logger.logged) == 1
    other = SimpleNamespace(
        is_global_zero=True, loggers=[CSVLogger("/tmp")], sanity_checking=False, current_epoch=0, global_step=0
    )
    with pytest.warns(UserWarning, match="Weights & Biases"):
        callback.on_validation_batch_end(other, module, outputs, None, 0)  # a no-op
    not_zero = SimpleNamespace(**{**vars(trainer), "is_global_zero": False})
    callback.on_validation_batch_end(not_zero, module, outputs, None, 0)
    assert len(wandb_logger.logged) == 1


def test_max_in_edges_keeps_the_strongest_inputs(tiny, image):
    full = CircuitReader(tiny, TAPS, k=4, scoring="weight", max_in_edges=None).read(image, test=False)
    pruned = CircuitReader(tiny, TAPS, k=4, scoring="weight", max_in_edges=1).read(image, test=False)
    for node, data in pruned.nodes(data=True):
        if data["kind"] == "channel" and data["layer"] in ("act2", "act3"):
            ((u, _),) = pruned.in_edges(node)
            strongest = max(full.in_edges(node, data="score"), key=lambda e: e[2])
            assert u == strongest[0]


def test_channel_attribution_equals_activation_times_gradient_by_hand(tiny, image):
    from actmatch.explainers.circuits import channel_attribution

    model = tiny.model
    with torch.no_grad():
        label = int(tiny(image).argmax())
    x = tiny.normalize(image)
    a1 = torch.relu(model.conv1(x)).detach().requires_grad_(True)  # A_c = Σ_p a_c(p) ∂ log p / ∂ a_c(p) (zero fill)
    a2 = torch.relu(model.conv2(a1))
    a2_leaf = a2.detach().requires_grad_(True)
    logits = model.fc(model.flatten(model.pool(torch.relu(model.conv3(a2_leaf)))))
    (g2,) = torch.autograd.grad(logits.log_softmax(-1)[0, label], [a2_leaf])
    (g1,) = torch.autograd.grad(a2, [a1], grad_outputs=g2)
    scores = channel_attribution(tiny, image, ["act1", "act2"], label)
    assert torch.allclose(scores["act1"], (a1 * g1).sum((2, 3))[0].detach(), atol=1e-5)
    assert torch.allclose(scores["act2"], (a2_leaf * g2).sum((2, 3))[0], atol=1e-5)
    keep = {"act1": torch.tensor([True, False, True, True])}
    assert channel_attribution(tiny, image, ["act1"], label, keep=keep)["act1"][1] == 0  # ablated: nothing to lose
    assert hook_count(tiny) == 0
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        channel_attribution(tiny, image, ["act1"], label)


def test_attribution_circuit_keeps_the_label_where_random_channels_do_not(lite0, coffee_path):
    """Lite0 on the espresso photo: 10% of the channels inside every block, chosen by attribution,
    keep the label; random channels of the same count do not (the control)."""
    from actmatch.datamodules.images import load_image

    x = load_image(coffee_path, lite0.input_size, lite0.fixed_input_size)[0][None]
    reader = CircuitReader(lite0, k=0.1)
    assert reader.layers[0] == "blocks.1.0.bn2" and len(reader.layers) == 15
    result = reader.faithfulness(x)
    assert result.label_kept, result
    assert reader.random_control(x, draws=4) == 0.0
    assert reader.random_control(x, k=1.0, draws=1) == 1.0  # everything kept: always the label
    energy = CircuitReader(lite0, k=0.1, rank="energy")
    assert not energy.faithfulness(x).label_kept  # the paper's energy nodes need more channels here
    assert hook_count(lite0) == 0


def test_tap_presets_and_ranking_errors(tiny, lite0):
    from actmatch.explainers.circuits import block_taps, circuit_taps

    blocks = block_taps(lite0)
    assert len(blocks) == 15 and blocks[0] == "blocks.1.0.bn2" and blocks[-1] == "blocks.6.0.bn2"
    assert circuit_taps(lite0) == blocks  # the default where the model has blocks
    assert circuit_taps(lite0, "stages") == ["blocks.0", "blocks.1", "blocks.2", "blocks.4", "blocks.6"]
    assert circuit_taps(lite0, ["stages"]) == circuit_taps(lite0, "stages")
    assert circuit_taps(tiny, fallback=["act1"]) == ["act1"]  # no blocks, no feature_info: the fallback
    with pytest.raises(ValueError, match=r"unknown tap preset 'blockz'"):
        circuit_taps(lite0, "blockz")
    with pytest.raises(ValueError, match="no inverted-residual or ResNet blocks"):
        circuit_taps(tiny)
    with pytest.raises(ValueError, match=r"unknown channel ranking 'loud'.*attribution"):
        CircuitReader(tiny, TAPS, rank="loud")
    reader = CircuitReader(tiny, TAPS, k=2)
    with pytest.raises(ValueError, match="needs the image"):
        reader.keep(reader.activations(torch.rand(1, 3, 12, 12)))


@pytest.mark.parametrize("model_size, file_size", [((13, 17), (40, 50)), ((224, 299), (375, 500)), ((302, 224), (500, 371))])
def test_a_saved_mask_comes_back_exactly_as_it_was_classified(tmp_path, model_size, file_size):
    """``actmatch explain`` writes the classified mask upsampled (nearest) to the file's size; reading
    it back for ``--masks-from`` must give that mask pixel for pixel, not a resize shifted by a pixel."""
    import torch.nn.functional as F

    from actmatch.commands.circuit import read_mask, saved_mask

    generator = torch.Generator().manual_seed(0)
    classified = (torch.rand(1, 1, *model_size, generator=generator) > 0.7).float()
    full = F.interpolate(classified, size=file_size, mode="nearest")[0, 0]
    Image.fromarray((full.numpy() * 255).astype(np.uint8)).save(tmp_path / "mask.png")
    assert torch.equal(read_mask(tmp_path / "mask.png", model_size), classified)
    assert not torch.equal(F.interpolate(full[None, None], size=model_size, mode="nearest"), classified)  # a resize would not
    mask, source = saved_mask(tmp_path, model_size)
    assert torch.equal(mask, classified) and source.endswith("mask.png")


def test_a_mask_saved_below_the_model_size_is_read_from_mask_input_or_marked_resized(tmp_path):
    from actmatch.commands.circuit import saved_mask

    classified = (torch.rand(1, 1, 30, 40, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    small = torch.nn.functional.interpolate(classified, size=(20, 25), mode="nearest")[0, 0]  # the file is smaller
    Image.fromarray((small.numpy() * 255).astype(np.uint8)).save(tmp_path / "mask.png")
    mask, source = saved_mask(tmp_path, (30, 40))
    assert mask.shape == (1, 1, 30, 40) and "resized" in source
    Image.fromarray((classified[0, 0].numpy() * 255).astype(np.uint8)).save(tmp_path / "mask_input.png")
    mask, source = saved_mask(tmp_path, (30, 40))
    assert torch.equal(mask, classified) and source.endswith("mask_input.png")
