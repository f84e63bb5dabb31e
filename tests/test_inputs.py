"""Image files as users have them, and the installed command.

* A phone photo stores its pixels sideways plus an EXIF orientation tag: every reader of image
  files in the package sees the upright picture, and the outputs are drawn on it.
* A file over Pillow's decompression-bomb limit is refused in one line naming the file and the
  limit; the other images of the call are still explained.
* ``actmatch --version`` prints pyproject.toml's version.
* (behaviour) the built wheel, installed into a fresh virtual environment, runs ``actmatch demo``.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import skimage.data
import tomllib
import torch
from PIL import Image

from actmatch.datamodules import images as images_mod
from actmatch.datamodules.images import PIXEL_LIMIT_ENV, ImageReadError, load_image, read_rgb
from lightning_helpers import tiny_explainer_config

ROOT = Path(__file__).resolve().parents[1]
ORIENTATION = 0x0112  # the EXIF tag
SIZE = 32  # model input size of the tests' loaders


@pytest.fixture()
def phone_photo(tmp_path) -> tuple[Path, Path, np.ndarray]:
    """(sideways.jpg, upright.png, upright pixels): a JPEG whose pixels are stored sideways with
    EXIF orientation 6, and a PNG of the picture a viewer shows for it.

    Orientation 6 (EXIF 2.3, tag 0x0112): the stored 0th row is the visual right-hand side and the
    0th column the visual top, i.e. the displayed picture is the stored one turned 90 degrees
    clockwise. The upright PNG is made from the JPEG's decoded pixels with numpy, not PIL's
    transpose, so the comparison does not trust the code under test.
    """
    photo = np.asarray(Image.fromarray(skimage.data.coffee()).resize((72, 48), Image.BICUBIC))  # (48, 72, 3)
    sideways = tmp_path / "sideways.jpg"
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    Image.fromarray(np.ascontiguousarray(np.rot90(photo, k=1))).save(sideways, quality=95, exif=exif)  # (72, 48)
    with Image.open(sideways) as img:  # the stored pixels, as they are in the file
        assert img.getexif()[ORIENTATION] == 6 and img.size == (48, 72)
        stored = np.asarray(img.convert("RGB"))
    upright_pixels = np.ascontiguousarray(np.rot90(stored, k=-1))  # 90 degrees clockwise: (48, 72, 3)
    upright = tmp_path / "upright.png"
    Image.fromarray(upright_pixels).save(upright)
    return sideways, upright, upright_pixels


def _read_binary(path: Path) -> np.ndarray:
    from actmatch.commands.circuit import _read_binary

    return _read_binary(path)[0, 0].numpy()


def test_every_reader_sees_the_upright_photo(phone_photo, tmp_path):
    sideways, upright, pixels = phone_photo
    assert np.array_equal(np.asarray(read_rgb(sideways)), pixels)

    tensor, original = load_image(sideways, SIZE)  # explain, benchmark and the predict datamodule
    upright_tensor, upright_original = load_image(upright, SIZE)
    assert original == upright_original == pixels.shape[:2]
    assert torch.equal(tensor, upright_tensor) and tensor.shape[-2:] == (SIZE, SIZE * 72 // 48)

    from actmatch.commands.benchmark import load_images
    from actmatch.datamodules.imagenet import ImageFolderSubset
    from actmatch.datamodules.predict import ImagePaths

    classifier = SimpleNamespace(input_size=SIZE, fixed_input_size=False)
    (bench,) = load_images([str(sideways)], classifier, None)
    assert torch.equal(bench.image, upright_tensor) and bench.file_size == pixels.shape[:2]

    item = ImagePaths([sideways], SIZE)[0]
    assert item["error"] == "" and torch.equal(item["image"], upright_tensor)
    assert item["original_size"].tolist() == list(pixels.shape[:2])

    sample = ImageFolderSubset([(sideways, 0, "n01440764")], images_mod.to_tensor)[0]
    assert torch.equal(sample["image"], images_mod.to_tensor(Image.fromarray(pixels)))

    from actmatch.commands.circuit import _load

    circuit_original, circuit_image = _load(sideways, classifier)
    assert circuit_original.size == (72, 48) and torch.equal(circuit_image[0], upright_tensor)

    # a mask file with an orientation tag is read upright too (``actmatch circuit --masks-from``)
    mask = np.zeros((48, 72), dtype=np.uint8)
    mask[:, :10] = 255  # the upright left edge
    tagged = tmp_path / "mask.png"
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    Image.fromarray(np.ascontiguousarray(np.rot90(mask, k=1))).save(tagged, exif=exif)
    assert np.array_equal(_read_binary(tagged), mask / 255)


def test_explain_draws_on_the_upright_photo(phone_photo, tmp_path, capsys):
    from actmatch.commands import explain as explain_cmd

    sideways, upright, pixels = phone_photo
    out, config = tmp_path / "out", tiny_explainer_config(tmp_path / "tiny.yaml")
    code = explain_cmd.main(
        "explain",
        [str(sideways), str(upright), "--out", str(out), "--config", str(config), "--input-size", str(SIZE), "--steps", "2"],
    )
    assert code == 0, capsys.readouterr().err
    height, width = pixels.shape[:2]
    for name in ("mask.png", "explanation.png"):
        with Image.open(out / "sideways" / name) as got, Image.open(out / "upright" / name) as want:
            assert got.size == (width, height)
            assert np.array_equal(np.asarray(got), np.asarray(want)), name  # same input, same seed: same output
    with Image.open(out / "sideways" / "figure.png") as got, Image.open(out / "upright" / "figure.png") as want:
        assert got.size == want.size and np.array_equal(np.asarray(got), np.asarray(want))
    summaries = [json.loads((out / name / "summary.json").read_text()) for name in ("sideways", "upright")]
    assert summaries[0]["label"] == summaries[1]["label"]
    assert summaries[0]["confidence_original"] == summaries[1]["confidence_original"]


def _random_png(path: Path, height: int, width: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def test_images_over_the_pixel_limit_are_refused_and_the_rest_explained(tmp_path, monkeypatch, capsys):
    from actmatch.commands import explain as explain_cmd

    photos = tmp_path / "photos"
    photos.mkdir()
    ok = _random_png(photos / "ok.png", 40, 60)  # 2,400 pixels
    warned = _random_png(photos / "warned.png", 60, 100)  # 6,000: Pillow only warns (1x to 2x its limit)
    huge = _random_png(photos / "huge.png", 100, 120)  # 12,000: Pillow raises (over 2x)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)
    monkeypatch.delenv(PIXEL_LIMIT_ENV, raising=False)
    out, config = tmp_path / "out", tiny_explainer_config(tmp_path / "tiny.yaml")
    code = explain_cmd.main(
        "explain", [str(photos), "--out", str(out), "--config", str(config), "--input-size", str(SIZE), "--steps", "2"]
    )
    err = capsys.readouterr().err
    assert code == 1, err
    for path, pixels in ((warned, "6,000"), (huge, "12,000")):
        lines = [line for line in err.splitlines() if str(path) in line and line.startswith("error:")]
        assert len(lines) == 1, err
        assert "5,000 pixels" in lines[0] and pixels in lines[0] and PIXEL_LIMIT_ENV in lines[0]
    assert (out / "ok" / "mask.png").is_file() and not (out / "warned").exists() and not (out / "huge").exists()
    with (out / "summary.csv").open(newline="") as handle:
        status = {Path(row["image"]).name: row["status"] for row in csv.DictReader(handle)}
    assert status == {ok.name: "ok", warned.name: "error", huge.name: "error", "__aggregate__": "1 ok, 2 failed"}


def test_the_environment_variable_raises_the_limit(tmp_path, monkeypatch):
    huge = _random_png(tmp_path / "huge.png", 100, 120)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)
    monkeypatch.setenv(PIXEL_LIMIT_ENV, "12000")
    assert read_rgb(huge).size == (120, 100)
    monkeypatch.setenv(PIXEL_LIMIT_ENV, "11999")
    with pytest.raises(ImageReadError, match="11,999 pixels"):
        read_rgb(huge)
    monkeypatch.setenv(PIXEL_LIMIT_ENV, "lots")
    with pytest.raises(ImageReadError, match=f"{PIXEL_LIMIT_ENV}='lots' is not a positive whole number"):
        read_rgb(huge)


def _pyproject_version() -> str:
    with (ROOT / "pyproject.toml").open("rb") as handle:
        return tomllib.load(handle)["project"]["version"]


def test_version_prints_the_pyproject_version(capsys):
    from actmatch.cli import main

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"actmatch {_pyproject_version()}"


def _run(args: list[str], cwd: Path, timeout: int) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(WANDB_MODE="offline", WANDB_SILENT="true", HF_HUB_OFFLINE="1", MPLBACKEND="Agg")
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.mark.behaviour
def test_the_built_wheel_runs_the_demo(tmp_path):
    """Build the wheel from a copy of the package, install it alone into a fresh virtual
    environment whose dependencies come from this interpreter's site-packages (added after the
    environment's own, by a .pth file: the editable install's hook is not run), and run the
    console script from a folder outside the checkout."""

    source = tmp_path / "source"  # building in the checkout would leave build/ and egg-info there
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(ROOT / "actmatch", source / "actmatch", ignore=shutil.ignore_patterns("__pycache__"))
    if subprocess.run([sys.executable, "-c", "import build"], capture_output=True).returncode:
        pytest.fail("the package `build` is missing: pip install -e '.[dev]'")
    _run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path / "dist"), str(source)],
        tmp_path,
        600,
    )
    (wheel,) = (tmp_path / "dist").glob("actmatch-*.whl")

    fresh = tmp_path / "fresh"
    _run([sys.executable, "-m", "venv", str(fresh)], tmp_path, 300)
    python = fresh / "bin" / "python"
    _run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheel)], tmp_path, 300)
    fresh_site = Path(
        _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path, 60).stdout.strip()
    )
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (fresh_site / "zz_actmatch_dependencies.pth").write_text("\n".join(sorted(deps)) + "\n")

    where = tmp_path / "elsewhere"
    where.mkdir()
    found = json.loads(
        _run(
            [
                str(python),
                "-c",
                "import json, sys, actmatch, importlib.resources as r; print(json.dumps("
                "[actmatch.__file__, sys.path, sorted(p.name for p in (r.files('actmatch.report') / "
                "'templates').iterdir())]))",
            ],
            where,
            120,
        ).stdout
    )
    assert Path(found[0]).is_relative_to(fresh_site), found[0]
    assert not any(Path(p).resolve() == ROOT for p in found[1] if p), found[1]
    assert "explain.html.j2" in found[2] and "base.html.j2" in found[2]

    actmatch = fresh / "bin" / "actmatch"
    assert _run([str(actmatch), "--version"], where, 120).stdout.strip() == f"actmatch {_pyproject_version()}"

    start = time.perf_counter()
    _run([str(actmatch), "demo", "--out", "demo"], where, 3000)
    seconds = time.perf_counter() - start
    print(f"actmatch demo from the wheel: {seconds:.0f} s")
    folder = where / "demo" / "coffee"
    with Image.open(folder / "mask.png") as mask:
        assert mask.size == (600, 400)  # skimage.data.coffee() is 400x600
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["label_name"] == "espresso"
    assert (where / "demo" / "report.html").is_file()
