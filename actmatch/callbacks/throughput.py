"""Lightning's ``ThroughputMonitor`` whose training counts go on across a resume (``--ckpt_path``)."""

from __future__ import annotations

import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ThroughputMonitor
from lightning.pytorch.trainer.states import RunningStage, TrainerFn

__all__ = ["ResumableThroughputMonitor"]

_COUNTS = ("samples", "batches", "lengths")


class ResumableThroughputMonitor(ThroughputMonitor):
    """``ThroughputMonitor`` (same arguments) that keeps the training stage's totals in its checkpointed state, so a
    resumed fit logs them for the whole run rather than from the resumed process's start::

        train/samples = samples_before_resume + samples_this_process  (likewise train/batches, train/lengths)
        train/time    = time_before_resume + training_seconds_this_process  (validation still excluded)

    ``*_before_resume`` are the totals at the last training batch before the checkpoint was saved (the last values
    the monitor had computed then); a run that is not resumed starts from 0 and logs what ``ThroughputMonitor``
    does. The rates (``train/samples_per_sec``, ``train/batches_per_sec``, ...) are differences over the
    ``window_size`` most recent batches, so the offsets cancel: they stay rates of the current process, and after a
    resume they appear once the window has filled again. Validation, test and predict counts are as Lightning's.
    It sets the parent's private counters and start time (``_samples``, ``_batches``, ``_lengths``, ``_t0s``, as
    in Lightning 2.6); ``tests/test_throughput.py`` checks it against a resume worked out by hand.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.resumed_from: dict[str, float] = {"time": 0.0, **dict.fromkeys(_COUNTS, 0)}

    def _start(self, trainer: L.Trainer) -> None:
        super()._start(trainer)
        stage = trainer.state.stage
        if stage == RunningStage.TRAINING and trainer.state.fn == TrainerFn.FITTING:
            self._samples[stage] = int(self.resumed_from["samples"])
            self._batches[stage] = int(self.resumed_from["batches"])
            self._lengths[stage] = int(self.resumed_from["lengths"])
            self._t0s[stage] = time.perf_counter() - self.resumed_from["time"]

    def state_dict(self) -> dict[str, float]:
        stage = RunningStage.TRAINING
        throughput = self._throughputs.get(stage)
        if throughput is None or not throughput._time:  # no training batch in this process (yet, or on this rank)
            return dict(self.resumed_from)
        state = {"time": float(throughput._time[-1])}
        state.update({name: getattr(self, f"_{name}").get(stage, 0) for name in _COUNTS})
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.resumed_from = {name: state_dict.get(name, value) for name, value in self.resumed_from.items()}
