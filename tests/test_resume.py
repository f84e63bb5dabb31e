"""`actmatch explain` killed part-way and re-run: every image once, finished folders untouched."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from lightning_helpers import class_folder_images, tiny_explainer_config

ROOT = Path(__file__).resolve().parents[1]


def complete_folders(out: Path) -> list[Path]:
    return sorted(p.parent for p in out.glob("class_*/img_*/summary.json"))


def file_times(folders: list[Path]) -> dict[str, int]:
    return {str(f): f.stat().st_mtime_ns for folder in folders for f in folder.iterdir()}


def explain_command(images: Path, out: Path, config: Path) -> list[str]:
    return [
        str(Path(sys.executable).with_name("actmatch")),
        "explain",
        str(images),
        "--out",
        str(out),
        "--config",
        str(config),
        "--steps",
        "60",
        "--input-size",
        "48",
    ]


def test_killed_run_resumes_each_image_once(tmp_path):
    images, out = tmp_path / "images", tmp_path / "out"
    config = tiny_explainer_config(tmp_path / "tiny.yaml")
    paths = class_folder_images(images, 6, seed=0, prefix="class_")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        explain_command(images, out, config), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 240
    while len(complete_folders(out)) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # like a pre-empted job: no clean-up
    proc.wait()
    finished = complete_folders(out)
    assert 2 <= len(finished) < 6, f"the kill came too late to test a resume: {len(finished)} folders"
    assert not (out / "summary.csv").exists()
    before = file_times(finished)
    stale = out / "class_0" / ".img_999.staging-abcd1234"  # what a kill during a write leaves
    stale.mkdir(parents=True, exist_ok=True)
    (stale / "mask.png").write_bytes(b"partial")

    rerun = subprocess.run(explain_command(images, out, config), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"{len(finished)} image(s) already explained" in rerun.stderr
    assert file_times(finished) == before  # the finished folders were not rewritten
    assert len(complete_folders(out)) == 6
    assert not [p for p in out.rglob(".*")], "staging folders or temporary files left behind"
    with (out / "summary.csv").open() as handle:
        rows = [r for r in csv.DictReader(handle) if r["image"] != "__aggregate__"]
    assert sorted(r["image"] for r in rows) == sorted(str(p) for p in paths)  # each image exactly once
    assert all(r["status"] == "ok" for r in rows)
    assert sorted(r["folder"] for r in rows) == sorted(p.relative_to(images).with_suffix("").as_posix() for p in paths)
