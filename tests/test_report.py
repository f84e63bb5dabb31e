"""report.html (actmatch.report, ``actmatch report``) on tiny synthetic explain and benchmark folders.

The fast tests read the HTML; the browser tests render it in headless Chromium (Debian's
``chromium`` driven by Playwright) and skip where either is missing, unless
``ACTMATCH_REQUIRE_BROWSER=1`` (``make check-report``), which turns the skip into a failure.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
import torch
from PIL import Image

from actmatch.cli import main as cli_main
from actmatch.report import ReportError, detect_kind, write_report
from actmatch.report.maps import write_method_maps

EXPLAIN_FIELDS = ["image", "backbone", "label", "label_name", "confidence_original", "label_explanation",
                  "label_explanation_name", "confidence_explanation", "label_kept", "mask_area", "steps", "seconds",
                  "seed", "status", "error"]  # fmt: skip
#: (image, folder, mask_area, label_kept, robustness): areas out of order, one label lost
EXPLAIN_IMAGES = [("photos/cat.png", "cat", 0.30, True, 0.5),
                  ("photos/n01/img_001.png", "n01/img_001", 0.10, False, 0.0),
                  ("photos/dog.png", "dog", 0.20, True, 0.25)]  # fmt: skip
METHODS = ["am", "gradcam"]


def _png(path: Path, size: tuple[int, int] = (48, 32), seed: int = 0) -> None:
    """A noisy colour gradient: never blank."""
    rng = np.random.default_rng(seed)
    width, height = size
    ramp = np.linspace(0, 255, width)[None, :, None] * np.ones((height, 1, 3))
    array = (0.6 * ramp + 0.4 * rng.integers(0, 256, (height, width, 3))).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _write_csv(path: Path, fields: list[str], rows: list[dict]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def make_explain_folder(root: Path, folder_column: bool = True) -> Path:
    """An ``actmatch explain`` output: 3 images (nested folder for one), an error row, the aggregate row."""
    rows = []
    for i, (image, folder, area, kept, robust) in enumerate(EXPLAIN_IMAGES):
        for name in ("figure", "mask", "explanation"):
            _png(root / folder / f"{name}.png", (120, 40) if name == "figure" else (40, 30), seed=i)
        row = {"image": image, "backbone": "tiny", "label": i, "label_name": f"class {i}", "confidence_original": 0.9 - i / 10,
               "label_explanation": i if kept else 7, "label_explanation_name": f"class {i if kept else 7}",
               "confidence_explanation": 0.5, "label_kept": kept, "mask_area": area, "steps": 5, "seconds": 1.5 + i,
               "seed": 0, "status": "ok", "error": "", "robustness": robust}  # fmt: skip
        (root / folder / "summary.json").write_text(json.dumps(row))
        rows.append({**row, "folder": folder} if folder_column else row)
    rows.append({"image": "photos/broken.png", "status": "error", "error": "photos/broken.png: cannot identify image file"})
    rows.append({"image": "__aggregate__", "label_kept": 0.6667, "mask_area": 0.2, "seconds": 2.5, "status": "3 ok, 1 failed"})
    fields = EXPLAIN_FIELDS + ["robustness"] + (["folder"] if folder_column else [])
    _write_csv(root / "summary.csv", fields, rows)
    (root / "aggregate.json").write_text(
        json.dumps(
            {"images": 4, "explained": 3, "failed": 1, "label_kept_rate": 0.6667, "median_mask_area": 0.2, "median_seconds": 2.5}
        )
    )
    return root


def make_benchmark_folder(root: Path, maps: bool = True) -> Path:
    """An ``actmatch benchmark`` output: 3 images × 2 methods (one run failed), summary with intervals and p-values."""
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, image in enumerate(["imgs/a/x.png", "imgs/b/x.png", "imgs/y.png"]):  # two stems collide
        for j, method in enumerate(METHODS):
            failed = (i, method) == (2, "gradcam")
            rows.append({"image": image, "method": method, "label": i, "label_name": f"class {i}", "confidence": 0.3 + 0.2 * i,
                         "area": 0.1, "kept_equal_area": "" if failed else int((i + j) % 2 == 0),
                         "robustness": "" if failed else 0.1 * (3 - i) + j, "insertion_auc": "" if failed else 0.4,
                         "deletion_auc": "" if failed else 0.1, "seconds": "" if failed else 2.0 - 0.5 * i,
                         "error": "RuntimeError: out of memory" if failed else ""})  # fmt: skip
        if maps:
            image_tensor = torch.rand(3, 30, 40)  # (3, H, W)
            method_maps = {"am": torch.rand(1, 1, 30, 40), "gradcam": None if i == 2 else torch.rand(1, 1, 30, 40)}
            write_method_maps(root, image, image_tensor, method_maps)
    _write_csv(root / "results.csv", list(rows[0]), rows)
    summary = [{"method": "am", "images": 3, "kept_equal_area": 0.667, "kept_equal_area_ci_low": 0.333,
                "kept_equal_area_ci_high": 1.0, "robustness": 0.2, "median_seconds": 1.5, "p_value_vs_am": "", "errors": 0},
               {"method": "gradcam", "images": 2, "kept_equal_area": 0.5, "kept_equal_area_ci_low": 0.0,
                "kept_equal_area_ci_high": 1.0, "robustness": 1.25, "median_seconds": 1.75, "p_value_vs_am": 0.0312,
                "errors": 1}]  # fmt: skip
    _write_csv(root / "summary.csv", list(summary[0]), summary)
    _png(root / "summary.png", (200, 60), seed=5)
    _png(root / "comparison.png", (200, 120), seed=6)
    return root


class _Links(HTMLParser):
    """Every ``src`` and ``href`` of a page, and the elements with an id."""

    def __init__(self) -> None:
        super().__init__()
        self.src, self.href, self.ids = [], [], set()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.src += [attrs["src"]] if "src" in attrs else []
        self.href += [attrs["href"]] if "href" in attrs else []
        self.ids |= {attrs["id"]} if "id" in attrs else set()


def _links(html: str) -> _Links:
    parser = _Links()
    parser.feed(html)
    return parser


def _assert_self_contained(path: Path) -> str:
    """No network reference, no external script or style; every linked file exists next to the page."""
    html = path.read_text()
    links = _links(html)
    assert not re.search(r"(?:src|href)\s*=\s*[\"']?(?:https?:)?//", html)
    assert "<link" not in html and "<script src" not in html
    for url in links.src + links.href:
        assert not Path(unquote(url)).is_absolute(), url
        assert (path.parent / unquote(url)).is_file(), f"{url} does not exist"
    return html


# ------------------------------------------------------------------------------------------ fast


def test_explain_report_is_self_contained_and_links_every_image(tmp_path):
    out = make_explain_folder(tmp_path / "explain")
    path = write_report(out)
    assert path == out / "report.html" and detect_kind(out) == "explain"
    html = _assert_self_contained(path)
    links = _links(html)
    assert {"summary", "gallery", "only-lost"} <= links.ids
    for _, folder, *_ in EXPLAIN_IMAGES:  # the `folder` column, nested folders included
        assert f"{folder}/figure.png" in links.src
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_explain_report_shows_error_rows_and_every_numeric_column(tmp_path):
    html = write_report(make_explain_folder(tmp_path)).read_text()
    assert "cannot identify image file" in html
    assert len(re.findall(r'<tr class="gallery-row[^"]*\berror\b', html)) == 1
    assert len(re.findall(r'<tr class="gallery-row', html)) == 4  # 3 images + the failed one, no __aggregate__
    for key in ("mask_area", "confidence_original", "label_kept", "seconds", "robustness"):
        assert f'data-sort="{key}"' in html
    assert 'data-sort="seed"' not in html and 'data-sort="label"' not in html  # identifiers are not measures
    assert 'data-mask_area="0.1"' in html and 'data-lost="label"' in html


def test_explain_report_falls_back_to_the_image_stem_without_a_folder_column(tmp_path):
    out = make_explain_folder(tmp_path, folder_column=False)
    html = write_report(out).read_text()
    assert 'src="cat/figure.png"' in html
    assert "no images found" in html  # n01/img_001 is not at OUT/img_001: shown as missing, not a broken link
    _assert_self_contained(out / "report.html")


def test_benchmark_report_shows_every_method_map_and_the_summary_columns(tmp_path):
    out = make_benchmark_folder(tmp_path / "bench")
    assert detect_kind(out) == "benchmark"
    html = _assert_self_contained(write_report(out))
    links = _links(html)
    maps = [s for s in links.src if s.startswith("maps/")]
    assert len(maps) == 3 + 5  # 3 photos, 2 + 2 + 1 maps (gradcam failed on the third image)
    assert {"maps/x/am.png", "maps/x-2/am.png"} <= set(maps)  # same stem, two images
    assert "RuntimeError: out of memory" in html
    assert "0.667 [0.333, 1]" in html  # the interval folded into its column
    assert "p value vs am" in html and "0.0312" in html
    assert 'data-sort="am_robustness"' in html and 'data-sort="gradcam_kept_equal_area"' in html
    assert "comparison.png" not in links.src


def test_benchmark_report_without_maps_shows_comparison_png(tmp_path):
    out = make_benchmark_folder(tmp_path, maps=False)
    links = _links(_assert_self_contained(write_report(out)))
    assert "comparison.png" in links.src and "summary.png" in links.src
    assert not [s for s in links.src if s.startswith("maps/")]


def test_write_method_maps_writes_small_overlays_and_skips_failed_methods(tmp_path):
    files = write_method_maps(
        tmp_path,
        "a/b/photo 1.jpg",
        torch.rand(1, 3, 300, 400),
        {"am": torch.rand(1, 1, 300, 400), "rise": torch.rand(300, 400), "ig": None},
    )
    assert set(files) == {"photo", "am", "rise"}
    for rel in files.values():
        with Image.open(tmp_path / rel) as image:
            assert max(image.size) == 160 and image.mode == "RGB"
    index = json.loads((tmp_path / "maps" / "photo 1" / "index.json").read_text())
    assert index == {"image": "a/b/photo 1.jpg", "files": files}
    assert write_method_maps(tmp_path, "a/b/photo 1.jpg", torch.rand(3, 30, 40), {}) == {"photo": files["photo"]}


@pytest.mark.parametrize("make", [None, "empty", "file", "other_csv"])
def test_report_command_exits_2_and_names_what_it_expected(tmp_path, capsys, make):
    target = tmp_path / "missing"
    if make == "empty":
        target.mkdir()
    elif make == "file":
        target.write_text("x")
    elif make == "other_csv":
        target.mkdir()
        (target / "summary.csv").write_text("a,b\n1,2\n")
    assert cli_main(["report", str(target)]) == 2
    err = capsys.readouterr().err
    assert str(target) in err and "actmatch explain" in err and "actmatch benchmark" in err
    assert not (target / "report.html").exists()
    with pytest.raises(ReportError):
        write_report(target)


def test_report_command_rebuilds_the_page(tmp_path, capsys):
    out = make_explain_folder(tmp_path)
    assert cli_main(["report", str(out)]) == 0
    assert (out / "report.html").is_file() and "report.html" in capsys.readouterr().out


# --------------------------------------------------------------------------------------- browser


def _browser_or_skip() -> None:
    from actmatch.report.browser import BrowserUnavailable, require_browser

    try:
        require_browser()
    except BrowserUnavailable as err:
        if os.environ.get("ACTMATCH_REQUIRE_BROWSER"):
            pytest.fail(f"ACTMATCH_REQUIRE_BROWSER is set but {err}")
        pytest.skip(str(err))


def _page_box(page, selector: str) -> tuple[int, int, int, int]:
    """The element's box in page coordinates (what a full-page screenshot shows): left, top, right, bottom."""
    box = page.evaluate(
        """s => { const r = document.querySelector(s).getBoundingClientRect();
                  return [r.left + window.scrollX, r.top + window.scrollY, r.right + window.scrollX, r.bottom + window.scrollY]; }""",  # noqa: E501 - JavaScript
        selector,
    )
    return tuple(round(v) for v in box)


def _assert_visible(shot: Image.Image, page, selector: str) -> None:
    left, top, right, bottom = _page_box(page, selector)
    assert right - left > 10 and bottom - top > 10, f"{selector} has no size"
    crop = np.asarray(shot.crop((left, top, right, bottom)).convert("L"), dtype=float)
    assert crop.std() > 5, f"{selector} looks blank (pixel std {crop.std():.1f})"


@contextlib.contextmanager
def _rendered(path: Path, gallery_image: str):
    """The report open in Chromium, checked to show every image, the summary table and ``gallery_image``."""
    _browser_or_skip()
    from actmatch.report.browser import open_page

    with open_page(path) as page:
        assert page.evaluate("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
        shot = Image.open(io.BytesIO(page.screenshot(full_page=True)))
        _assert_visible(shot, page, "#summary")
        _assert_visible(shot, page, gallery_image)
        yield page


def _order(page) -> list[str]:
    return page.eval_on_selector_all("#gallery tr.gallery-row", "rows => rows.map(r => r.dataset.image)")


def test_browser_explain_report_renders_sorts_and_filters(tmp_path):
    with _rendered(write_report(make_explain_folder(tmp_path)), "#gallery img") as page:
        before = _order(page)
        page.click("th[data-sort=mask_area]")
        ascending = _order(page)
        assert ascending != before
        assert ascending[:3] == ["photos/n01/img_001.png", "photos/dog.png", "photos/cat.png"]  # 10, 20, 30 %
        assert ascending[3] == "photos/broken.png"  # no area: last
        assert page.get_attribute("th[data-sort=mask_area]", "aria-sort") == "ascending"
        page.click("th[data-sort=mask_area]")
        assert _order(page)[:3] == ascending[2::-1]
        page.check("#only-lost")
        assert page.locator("#gallery tr.gallery-row:visible").count() == 1
        assert page.inner_text("#shown-count") == "1"


def test_browser_benchmark_report_renders_maps_and_sorts_by_a_method_metric(tmp_path):
    with _rendered(write_report(make_benchmark_folder(tmp_path)), "#gallery td.method img") as page:
        before = _order(page)
        page.click("button[data-sort=am_seconds]")
        after = _order(page)
        assert after != before and after == before[::-1]  # seconds 2.0, 1.5, 1.0
        page.check("#only-lost")
        page.select_option("#lost-method", "gradcam")
        assert page.locator("#gallery tr.gallery-row:visible").count() == 1  # gradcam lost the label on image 1 only


def test_benchmark_report_of_an_interrupted_run_without_summary_csv(tmp_path):
    out = make_benchmark_folder(tmp_path, maps=False)
    (out / "summary.csv").unlink()
    html = _assert_self_contained(write_report(out))
    assert "No summary.csv" in html and len(re.findall(r'<tr class="gallery-row', html)) == 3
