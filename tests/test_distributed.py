"""Scale: DDP on CPU with 2 processes (gloo): fit, predict with the ExplanationWriter, the
ResultsTable's merged rows; and a killed run resumed from its checkpoint."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import lightning as L
import pytest
import yaml

from actmatch.callbacks import ResultsTable
from lightning_helpers import class_folder_images, run_cli, tiny_explainer_config

SMALL = [
    "--trainer.logger",
    "false",
    "--trainer.enable_progress_bar",
    "false",
    "--trainer.num_sanity_val_steps",
    "0",
    "--data.init_args.image_size",
    "48",
    "--data.init_args.batch_size",
    "4",
]


@pytest.mark.behaviour  # two processes
def test_ddp_two_cpu_processes_both_run_and_sync_metrics(tmp_path):
    probe_dir = tmp_path / "ranks"
    extra = tmp_path / "ddp.yaml"
    extra.write_text(
        yaml.safe_dump(
            {
                "trainer": {
                    "callbacks": [
                        {
                            "class_path": "actmatch.callbacks.ExplanationMetrics",
                            "init_args": {"stages": ["train"], "histograms": False},
                        },
                        {"class_path": "lightning_helpers.RankProbe", "init_args": {"out_dir": str(probe_dir)}},
                    ]
                }
            }
        )
    )
    proc = run_cli(
        [
            "fit",
            "--config",
            "experiments/smoke.yaml",
            "--config",
            str(extra),
            *SMALL,
            "--trainer.strategy",
            "ddp",
            "--trainer.accelerator",
            "cpu",
            "--trainer.devices",
            "2",
            "--trainer.limit_train_batches",
            "3",
            "--trainer.limit_val_batches",
            "1",
            "--trainer.default_root_dir",
            str(tmp_path),
        ],
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((probe_dir / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["world_size"] == 2 for r in ranks)
    assert all(r["batches"] == 3 for r in ranks)
    # the synced epoch mean is the same on both ranks and is the mean over both ranks' images
    synced = [r["metrics"]["train/epoch/mask_area"] for r in ranks]
    assert synced[0] == pytest.approx(synced[1], abs=1e-6)
    assert synced[0] == pytest.approx(sum(r["local_mask_area"] for r in ranks) / 2, abs=1e-5)


@pytest.mark.behaviour  # two CLI runs in subprocesses
def test_killed_run_resumes_from_checkpoint_without_losing_steps(tmp_path):
    steps_file, ckpt_dir = tmp_path / "steps.jsonl", tmp_path / "ckpt"

    def callbacks(kill: bool) -> str:
        items = [
            {
                "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                "init_args": {"dirpath": str(ckpt_dir), "every_n_train_steps": 1, "save_last": True, "save_top_k": 0},
            },
            {"class_path": "lightning_helpers.StepRecorder", "init_args": {"path": str(steps_file)}},
        ]
        if kill:
            items.append({"class_path": "lightning_helpers.KillAt", "init_args": {"step": 3}})
        path = tmp_path / f"callbacks_{kill}.yaml"
        path.write_text(yaml.safe_dump({"trainer": {"callbacks": items}}))
        return str(path)

    common = [
        "fit",
        "--config",
        "experiments/smoke.yaml",
        *SMALL,
        "--trainer.max_steps",
        "6",
        "--trainer.limit_train_batches",
        "6",
        "--trainer.limit_val_batches",
        "1",
        "--trainer.default_root_dir",
        str(tmp_path),
    ]
    killed = run_cli([*common, "--config", callbacks(kill=True)])
    assert killed.returncode == 17, killed.stderr[-3000:]  # killed part-way, no clean shutdown
    assert (ckpt_dir / "last.ckpt").is_file()
    resumed = run_cli([*common, "--config", callbacks(kill=False), "--ckpt_path", str(ckpt_dir / "last.ckpt")])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    steps = [json.loads(line) for line in steps_file.read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6], steps  # 1-3 before the kill, 4-6 after: none lost, none repeated
    import torch

    assert torch.load(ckpt_dir / "last.ckpt", weights_only=False)["global_step"] == 6


class PredictProbe(L.Callback):
    """Writes ``predict-rank<r>.json``: the images this rank explained (loaded by class_path)."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir, self.paths = Path(out_dir), []

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.paths.extend(batch["path"])

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / f"predict-rank{trainer.global_rank}.json").write_text(json.dumps(self.paths))


class TableProbe(ResultsTable):
    """ResultsTable that writes the merged rows to ``table.json`` instead of W&B."""

    def __init__(self, out_dir: str) -> None:
        super().__init__(panels=False)
        self.out_dir = Path(out_dir)

    def log_table(self, trainer, stage: str, rows: list[list]) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / "table.json").write_text(json.dumps({"rank": trainer.global_rank, "stage": stage, "rows": rows}))


@pytest.mark.behaviour  # two DDP runs of two processes each
def test_ddp_predict_explains_each_image_once_and_merges_the_summary(tmp_path):
    data, out, probes = tmp_path / "data", tmp_path / "out", tmp_path / "probes"
    paths = class_folder_images(data, 5, seed=3, shape=lambda i: (40, 48 + 4 * i))
    extra = tiny_explainer_config(tmp_path / "extra.yaml", input_size=48, steps=3, data_size=48)
    args = [
        "predict",
        "--config",
        "experiments/explain_folder.yaml",
        "--config",
        str(extra),
        "--data.init_args.root",
        str(data),
        "--trainer.accelerator",
        "cpu",
        "--trainer.devices",
        "2",
        "--trainer.strategy",
        "ddp",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.callbacks+=actmatch.callbacks.ExplanationWriter",
        "--trainer.callbacks.init_args.out_dir",
        str(out),
        "--trainer.callbacks+=test_distributed.PredictProbe",
        "--trainer.callbacks.init_args.out_dir",
        str(probes),
    ]
    proc = run_cli(args, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    per_rank = [json.loads((probes / f"predict-rank{r}.json").read_text()) for r in (0, 1)]
    assert all(per_rank) and not set(per_rank[0]) & set(per_rank[1])  # both ranks worked, on different images
    assert sorted(per_rank[0] + per_rank[1]) == sorted(str(p) for p in paths)  # every image once, no padding
    with (out / "summary.csv").open() as handle:
        rows = [r for r in csv.DictReader(handle)]
    assert [r["image"] for r in rows[:-1]] == [str(p) for p in sorted(paths)] and rows[-1]["image"] == "__aggregate__"
    assert all(r["status"] == "ok" and (out / r["folder"] / "mask.png").is_file() for r in rows[:-1])
    assert json.loads((out / "aggregate.json").read_text())["explained"] == 5
    assert not list(out.rglob(".*"))

    # resume with one image left: rank 1 gets none and the merge still completes
    shutil.rmtree(out / rows[0]["folder"])
    shutil.rmtree(probes)
    proc = run_cli(args, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    per_rank = [json.loads((probes / f"predict-rank{r}.json").read_text()) for r in (0, 1)]
    assert per_rank == [[rows[0]["image"]], []]
    with (out / "summary.csv").open() as handle:
        again = [r for r in csv.DictReader(handle)]
    assert [r["image"] for r in again] == [r["image"] for r in rows]
    assert [r["mask_area"] for r in again[1:-1]] == [r["mask_area"] for r in rows[1:-1]]  # read back, not redone


@pytest.mark.behaviour  # two processes
def test_ddp_results_table_gathers_rows_from_every_rank(tmp_path):
    extra = tmp_path / "table.yaml"
    extra.write_text(
        yaml.safe_dump(
            {
                "trainer": {
                    "callbacks": [
                        {"class_path": "test_distributed.TableProbe", "init_args": {"out_dir": str(tmp_path / "table")}}
                    ]
                }
            }
        )
    )
    proc = run_cli(
        [
            "validate",
            "--config",
            "experiments/smoke.yaml",
            "--config",
            str(extra),
            *SMALL,
            "--trainer.strategy",
            "ddp",
            "--trainer.accelerator",
            "cpu",
            "--trainer.devices",
            "2",
            "--trainer.limit_val_batches",
            "2",
            "--trainer.default_root_dir",
            str(tmp_path),
        ],
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = json.loads((tmp_path / "table" / "table.json").read_text())
    assert table["rank"] == 0 and table["stage"] == "val"
    assert [row[0] for row in table["rows"]] == list(range(16))  # 2 ranks x 2 batches x 4 images
