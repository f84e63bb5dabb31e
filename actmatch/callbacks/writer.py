"""Write ``actmatch predict``'s per-image explanations as ``actmatch explain`` does, on every rank.

:class:`ExplanationWriter` turns ``ActMatchExplainer.predict_step``'s batched
:class:`~actmatch.explainers.module.Explanation` into one folder per image under ``out_dir``
(``mask.png``, ``explanation.png``, ``figure.png``, ``summary.json``; the same files and
layout as ``actmatch explain``, each folder moved into place only when complete), then, when
predict ends, rank zero merges every rank's rows into ``summary.csv`` and ``aggregate.json``.

Resumable: before predict starts, rank zero removes the staging folders of killed runs and
finds the images whose folder is already complete; they are taken out of the datamodule (no
fit) and their rows read from their ``summary.json`` (``overwrite=True`` redoes them).
``out_dir`` must be on a file system every rank sees.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import TYPE_CHECKING, cast

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info

from actmatch.callbacks.gather import gather_objects
from actmatch.datamodules.images import ImageReadError, read_rgb
from actmatch.report import write_report
from actmatch.results import clean_staging, explanation_at, finished_rows, recipe_digest, write_result, write_summary

if TYPE_CHECKING:
    from actmatch.explainers.module import ActMatchExplainer

__all__ = ["ExplanationWriter"]


class ExplanationWriter(BasePredictionWriter):
    """One folder per image and a merged ``summary.csv`` / ``aggregate.json`` for ``predict``.

    Needs a datamodule that lists its images and can leave some out
    (:class:`~actmatch.datamodules.PredictDataModule`: ``items`` and ``drop``) and batches with
    ``path``, ``folder``, ``index`` and ``error`` per image; masks are mapped back to each
    file's size.

    Args:
        out_dir: output root (``OUT/<folder>/`` per image).
        overwrite: explain again the images whose folder is complete (default: skip them).
        circuit: also write the channel circuit of each explanation (circuit.json/png).
    """

    def __init__(self, out_dir: str = "outputs/explain", overwrite: bool = False, circuit: bool = False) -> None:
        super().__init__(write_interval="batch")
        self.out_dir, self.overwrite, self.circuit = Path(out_dir), overwrite, circuit
        self.done: dict[int, dict] = {}  # position in the datamodule's items -> row (complete before this run)
        self.rows: dict[int, dict] = {}  # position -> row written (or failed) by this rank

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage != "predict":
            return
        datamodule = trainer.datamodule  # type: ignore[attr-defined]  # Lightning sets it outside the Trainer class
        if not (hasattr(datamodule, "items") and hasattr(datamodule, "drop")):
            raise TypeError(
                f"ExplanationWriter needs a datamodule that lists its images (items, drop), got "
                f"{type(datamodule).__name__}; use data.class_path=actmatch.datamodules.PredictDataModule"
            )
        if getattr(pl_module, "mode", None) == "per_image" and trainer.predict_loop.inference_mode:
            raise ValueError(
                "per-image fits need gradients, which predict's inference mode turns off; "
                "set trainer.inference_mode=false (experiments/explain_folder.yaml does)"
            )
        done = {}
        if trainer.is_global_zero:
            clean_staging(self.out_dir)
            if not self.overwrite:
                classifier = cast("ActMatchExplainer", pl_module).classifier  # the module this writer serves
                done = finished_rows(datamodule.items, self.out_dir, classifier, self.circuit, self._digest(pl_module))
        self.done = trainer.strategy.broadcast(done, src=0)
        self.rows = {}
        out = self.out_dir.resolve()
        outputs = {item.folder for item in datamodule.items if item.path.resolve().is_relative_to(out)}
        datamodule.drop({row["folder"] for row in self.done.values()} | outputs)  # results are not inputs
        if self.done:
            rank_zero_info(
                f"{len(self.done)} image(s) already explained in {self.out_dir}, skipped "
                f"(ExplanationWriter overwrite=true redoes them)"
            )

    def write_on_batch_end(
        self, trainer, pl_module, prediction, batch_indices, batch, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        size = len(batch["path"])
        seed = inspect.signature(pl_module.fit_images).parameters["seed"].default  # what predict_step fits with
        for i in range(size):
            index, path, folder = int(batch["index"][i]), Path(batch["path"][i]), batch["folder"][i]
            if batch["error"][i]:
                self.rows[index] = self._error_row(path, batch["error"][i])
                continue
            try:
                original = read_rgb(path)
                self.rows[index] = write_result(
                    pl_module,
                    path,
                    original,
                    batch["image"][i].cpu(),
                    explanation_at(prediction, i, size),
                    self.out_dir,
                    seed,
                    self.circuit,
                    folder,
                    {"recipe_digest": self._digest(pl_module)},
                )
            except (ImageReadError, OSError, ValueError, RuntimeError) as err:
                self.rows[index] = self._error_row(path, str(err))

    @staticmethod
    def _digest(pl_module) -> str:
        """What produces the masks (resumed folders must match it): see ``recipe_digest``."""
        seed = inspect.signature(pl_module.fit_images).parameters["seed"].default
        return recipe_digest(pl_module, None, seed, getattr(pl_module, "mode", None) == "amortized")

    @staticmethod
    def _error_row(path: Path, message: str) -> dict:
        message = message if str(path) in message else f"{path}: {message}"
        print(f"error: {message}", file=sys.stderr)
        return {"image": str(path), "folder": "", "status": "error", "error": message}

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "predict":
            return
        gathered = gather_objects(self.rows)  # every rank, also one that had no images (no predict hooks ran)
        if not trainer.is_global_zero:
            return
        merged = dict(self.done)
        for rows in gathered:
            merged.update(rows)
        rows = [merged[index] for index in sorted(merged)]
        agg = write_summary(rows, self.out_dir)
        write_report(self.out_dir)
        rank_zero_info(
            f"wrote {self.out_dir}/: {agg['explained']}/{agg['images']} explained "
            f"({len(self.done)} from earlier runs), {agg['failed']} failed, label kept "
            f"{agg['label_kept_rate']}, median area {agg['median_mask_area']}"
        )
