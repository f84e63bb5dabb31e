"""Scale: DDP on CPU with 2 processes (gloo), and a killed run resumed from its checkpoint."""

from __future__ import annotations

import json

import pytest
import yaml
from lightning_helpers import run_cli

SMALL = ["--trainer.logger", "false", "--trainer.enable_progress_bar", "false", "--trainer.num_sanity_val_steps", "0",
         "--data.init_args.image_size", "48", "--data.init_args.batch_size", "4"]


@pytest.mark.slow  # two processes, ~1-5 min on the shared 2-core machine
def test_ddp_two_cpu_processes_both_run_and_sync_metrics(tmp_path):
    probe_dir = tmp_path / "ranks"
    extra = tmp_path / "ddp.yaml"
    extra.write_text(yaml.safe_dump({"trainer": {"callbacks": [
        {"class_path": "actmatch.callbacks.ExplanationMetrics", "init_args": {"stages": ["train"], "histograms": False}},
        {"class_path": "lightning_helpers.RankProbe", "init_args": {"out_dir": str(probe_dir)}},
    ]}}))
    proc = run_cli(["fit", "--config", "experiments/smoke.yaml", "--config", str(extra), *SMALL,
                    "--trainer.strategy", "ddp", "--trainer.accelerator", "cpu", "--trainer.devices", "2",
                    "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "1",
                    "--trainer.default_root_dir", str(tmp_path)], timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((probe_dir / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["world_size"] == 2 for r in ranks)
    assert all(r["batches"] == 3 for r in ranks)
    # the synced epoch mean is the same on both ranks and is the mean over both ranks' images
    synced = [r["metrics"]["train/epoch/mask_area"] for r in ranks]
    assert synced[0] == pytest.approx(synced[1], abs=1e-6)
    assert synced[0] == pytest.approx(sum(r["local_mask_area"] for r in ranks) / 2, abs=1e-5)


@pytest.mark.slow  # two CLI runs in subprocesses
def test_killed_run_resumes_from_checkpoint_without_losing_steps(tmp_path):
    steps_file, ckpt_dir = tmp_path / "steps.jsonl", tmp_path / "ckpt"

    def callbacks(kill: bool) -> str:
        items = [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                  "init_args": {"dirpath": str(ckpt_dir), "every_n_train_steps": 1, "save_last": True, "save_top_k": 0}},
                 {"class_path": "lightning_helpers.StepRecorder", "init_args": {"path": str(steps_file)}}]
        if kill:
            items.append({"class_path": "lightning_helpers.KillAt", "init_args": {"step": 3}})
        path = tmp_path / f"callbacks_{kill}.yaml"
        path.write_text(yaml.safe_dump({"trainer": {"callbacks": items}}))
        return str(path)

    common = ["fit", "--config", "experiments/smoke.yaml", *SMALL, "--trainer.max_steps", "6",
              "--trainer.limit_train_batches", "6", "--trainer.limit_val_batches", "1",
              "--trainer.default_root_dir", str(tmp_path)]
    killed = run_cli([*common, "--config", callbacks(kill=True)])
    assert killed.returncode == 17, killed.stderr[-3000:]  # killed part-way, no clean shutdown
    assert (ckpt_dir / "last.ckpt").is_file()
    resumed = run_cli([*common, "--config", callbacks(kill=False), "--ckpt_path", str(ckpt_dir / "last.ckpt")])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    steps = [json.loads(line) for line in steps_file.read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6], steps  # 1-3 before the kill, 4-6 after: none lost, none repeated
    import torch

    assert torch.load(ckpt_dir / "last.ckpt", weights_only=False)["global_step"] == 6
