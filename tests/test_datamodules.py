"""DataModules: synthetic evidence, ImageNet-style folders, images to predict."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from actmatch.datamodules import (
    ImageNetDataModule,
    ImageNetFolderError,
    PredictDataModule,
    SyntheticDataModule,
    SyntheticEvidence,
)
from actmatch.datamodules.images import ImageReadError
from actmatch.datamodules.synthetic import PATCH_COLOURS
from lightning_helpers import WNIDS, fake_imagenet, write_mask_targets


@pytest.mark.parametrize("variant,background", [("object", "texture"), ("shortcut", "clutter")])
def test_synthetic_samples_are_deterministic_and_well_formed(variant, background):
    ds = SyntheticEvidence(8, variant=variant, background=background, image_size=48, seed=3)
    again = SyntheticEvidence(8, variant=variant, background=background, image_size=48, seed=3)
    other = SyntheticEvidence(8, variant=variant, background=background, image_size=48, seed=4)
    for i in range(len(ds)):
        a, b = ds[i], again[i]
        assert a["image"].shape == (3, 48, 48) and a["evidence_mask"].shape == (1, 48, 48)
        assert 0 <= a["image"].min() and a["image"].max() <= 1
        assert set(a["evidence_mask"].unique().tolist()) <= {0.0, 1.0} and a["evidence_mask"].sum() > 0
        assert torch.equal(a["image"], b["image"]) and a["label"] == b["label"]
    assert not torch.equal(ds[0]["image"], other[0]["image"])


def test_synthetic_shortcut_patch_carries_the_class_colour():
    ds = SyntheticEvidence(12, variant="shortcut", image_size=64, seed=0)
    for i in range(len(ds)):
        item = ds[i]
        patch = item["evidence_mask"][0].bool()
        colour = item["image"][:, patch].mean(1)
        assert torch.allclose(colour, torch.tensor(PATCH_COLOURS[int(item["label"])]), atol=1e-6)
        assert not (patch & item["object_mask"][0].bool()).any()  # patch and object are disjoint


def test_synthetic_object_variant_evidence_is_the_object():
    item = SyntheticEvidence(1, variant="object")[0]
    assert torch.equal(item["evidence_mask"], item["object_mask"])


def test_synthetic_datamodule_batches_are_dicts_with_disjoint_splits():
    dm = SyntheticDataModule(train_size=8, val_size=4, test_size=4, batch_size=4, image_size=32)
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) >= {"image", "label", "evidence_mask"} and batch["image"].shape == (4, 3, 32, 32)
    assert not torch.equal(dm.val_set[0]["image"], dm.test_set[0]["image"])


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"num_classes": 9}, "num_classes"),
        ({"variant": "x"}, "variant"),
        ({"image_size": 8}, "image_size"),
        ({"background": "y"}, "background"),
    ],
)
def test_synthetic_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SyntheticEvidence(4, **kwargs)


@pytest.mark.parametrize("layout", ["split", "flat"])
def test_imagenet_layouts_give_imagenet_labels_and_unnormalised_images(tmp_path, layout):
    from timm.data import ImageNetInfo

    root = fake_imagenet(tmp_path / "inet", layout=layout, per_class=2)
    dm = ImageNetDataModule(str(root), classes=2, max_per_class=1, backbone="test_resnet", image_size=48, batch_size=2)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 48, 48) and batch["image"].dtype == torch.float32
    assert 0 <= batch["image"].min() and batch["image"].max() <= 1  # no normalisation
    names = ImageNetInfo().label_names()
    assert sorted(names[i] for i in batch["label"].tolist()) == sorted(WNIDS[:2])
    assert len(dm.splits["train"]) == 2  # 2 classes x 1 image


def test_imagenet_wnid_list_and_val_fraction(tmp_path):
    root = fake_imagenet(tmp_path / "inet", layout="flat", per_class=2)
    dm = ImageNetDataModule(str(root), classes=[WNIDS[2]], val_fraction=0.5, backbone="test_resnet", image_size=40)
    dm.setup()
    assert [w for _, _, w in dm.splits["train"]] == [WNIDS[2]] and len(dm.splits["val"]) == 1
    assert dm.splits["train"][0][0] != dm.splits["val"][0][0]


def test_imagenet_folder_errors_name_the_path(tmp_path):
    with pytest.raises(ImageNetFolderError, match="does not exist"):
        ImageNetDataModule(str(tmp_path / "missing")).setup()
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageNetFolderError, match=str(tmp_path / "empty")):
        ImageNetDataModule(str(tmp_path / "empty")).setup()
    bad = tmp_path / "bad" / "train" / "cats"
    bad.mkdir(parents=True)
    with pytest.raises(ImageNetFolderError, match="wnids"):
        ImageNetDataModule(str(tmp_path / "bad")).setup()
    root = fake_imagenet(tmp_path / "inet", layout="flat", per_class=1)
    with pytest.raises(ImageNetFolderError, match="n09999999"):
        ImageNetDataModule(str(root), classes=["n09999999"]).setup()


def test_predict_datamodule_reads_folders_globs_and_lists(tmp_path, small_coffee_path):
    dm = PredictDataModule([str(small_coffee_path)], backbone="test_resnet", image_size=48)
    batch = next(iter(dm.predict_dataloader()))
    assert batch["image"].shape[:2] == (1, 3) and min(batch["image"].shape[-2:]) == 48
    assert batch["path"] == [str(small_coffee_path)]
    glob_dm = PredictDataModule(str(small_coffee_path.parent / "*.png"), backbone="test_resnet", image_size=48)
    glob_dm.setup()
    assert len(glob_dm.dataset) >= 1
    square = PredictDataModule(str(small_coffee_path.parent), backbone="test_resnet", image_size=32, square=True, batch_size=2)
    assert next(iter(square.predict_dataloader()))["image"].shape[-2:] == (32, 32)


def test_predict_datamodule_errors(tmp_path):
    with pytest.raises(ImageReadError, match="no such file"):
        PredictDataModule([str(tmp_path / "nope.jpg")], backbone="test_resnet").setup()
    with pytest.raises(ValueError, match="square=True"):
        PredictDataModule(str(tmp_path), batch_size=4)


def test_paired_transform_is_timms_eval_transform_and_crops_the_mask_with_the_image():
    from PIL import Image

    from actmatch.datamodules.imagenet import backbone_transform, paired_transform

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (100, 150, 3), dtype=np.uint8))  # 150 wide, 100 high
    mask = torch.zeros(1, 100, 150, dtype=torch.uint8)
    mask[:, 25:75, 50:100] = 255  # a 50 x 50 square in the centre
    x, m = paired_transform("efficientnet_lite0")(image, mask)
    timm_x = backbone_transform("efficientnet_lite0")(image)  # timm.data.create_transform
    assert x.shape == timm_x.shape == (3, 224, 224) and (x - timm_x).abs().max() <= 1 / 255 + 1e-6
    # by hand: short side 100 -> 256 (224 / crop_pct 0.875), the square 128 px, inside the centre crop
    assert m.shape == (1, 224, 224) and set(m.unique().tolist()) <= {0.0, 1.0}
    assert abs(m.mean().item() - 128**2 / 224**2) < 0.01


def test_paired_augmentation_moves_the_mask_with_the_image():
    from PIL import Image

    from actmatch.datamodules.imagenet import paired_transform

    pixels = np.zeros((120, 160, 3), dtype=np.uint8)
    pixels[:, :80] = 255  # the left half white, the right half black
    mask = torch.zeros(1, 120, 160, dtype=torch.uint8)
    mask[:, :, :80] = 255  # and the mask on the white half
    transform = paired_transform("efficientnet_lite0", train=True, augment=True, image_size=64)
    flipped = 0
    for seed in range(12):
        torch.manual_seed(seed)
        x, m = transform(Image.fromarray(pixels), mask)
        bright = x.mean(0, keepdim=True) > x.mean()  # colour jitter keeps white brighter than black
        if 0 < m.mean() < 1:
            assert (bright == m.bool()).float().mean() > 0.95
            flipped += bool(m[0, :, -1].all())  # the mask on the right: a flip moved both
    assert flipped > 0


def test_imagenet_mask_targets_come_with_each_image_or_are_refused_with_the_command(tmp_path):
    root = fake_imagenet(tmp_path / "inet", layout="flat", per_class=1)
    write_mask_targets(sorted(root.glob("*.JPEG")), tmp_path / "masks")
    dm = ImageNetDataModule(str(root), backbone="test_resnet", image_size=48, batch_size=2, mask_targets=str(tmp_path / "masks"))
    batch = next(iter(dm.val_dataloader()))
    assert batch["mask_target"].shape == (2, 1, 48, 48)
    assert (batch["mask_target"][:, :, :, :20] == 1).all() and (batch["mask_target"][:, :, :, -20:] == 0).all()
    with pytest.raises(ImageNetFolderError, match="actmatch explain"):
        ImageNetDataModule(str(root), mask_targets=str(tmp_path / "none")).setup()
    write_mask_targets(sorted(root.glob("*.JPEG")), tmp_path / "small", size=(10, 10))
    dm = ImageNetDataModule(str(root), backbone="test_resnet", image_size=48, mask_targets=str(tmp_path / "small"))
    with pytest.raises(ImageNetFolderError, match="full-size mask.png"):
        next(iter(dm.val_dataloader()))
