"""``training.plan_to_max_time``: how many epochs fit in ``max_time``, re-planned after every epoch.

The plan follows the measured pace rather than being fixed once after epoch 1: the first epoch pays one-off
costs (allocations, oneDNN kernels, torch.compile) and on a shared CPU the pace changes with the other work, so
a plan made once would either waste the budget or be cut by the time limit before the schedule has annealed.
"""

from __future__ import annotations

import math

from loopml.config import TrainingConfig
from loopml.errors import LoopmlError

#: share of max_time left free: epoch-to-epoch jitter, so the last planned epoch ends before the time limit
MARGIN = 0.03
#: the pace is the mean of this many latest epochs (the first left out once there are others)
RECENT = 3
#: after the first RECENT epochs a plan grows by at most this share per epoch: a longer plan moves the schedule's
#: progress back and so raises the lr again; on a CPU whose load comes and goes an undamped plan swung 68 → 43 →
#: 55 epochs and re-warmed the lr each time it grew. Shrinking stays free: the time limit cuts an over-long plan.
GROWTH = 0.05


class EpochPlan:
    """The number of epochs that fit ``max_time``: at most ``epochs``, never fewer than those already done."""

    def __init__(self, max_time: float, epochs: int) -> None:
        self.max_time, self.epochs = max_time, epochs
        self.planned = epochs
        #: each epoch's seconds (training and validation), as the trainer counts them against max_time
        self.seconds: list[float] = []
        self.elapsed = 0.0

    def pace(self) -> float | None:
        """Seconds per epoch, from the latest epochs; None before the first."""
        if not self.seconds:
            return None
        recent = (self.seconds[1:] if len(self.seconds) > 1 else self.seconds)[-RECENT:]
        return sum(recent) / len(recent)

    def update(self, done: int, elapsed: float) -> int:
        """After an epoch, with ``done`` epochs in ``elapsed`` seconds in all: the planned number of epochs."""
        self.seconds.append(max(0.0, elapsed - self.elapsed))
        self.elapsed = elapsed
        pace = self.pace()
        left = self.max_time * (1 - MARGIN) - elapsed
        # min() first: a budget of 1e308 s (or inf) over a pace of 0.1 s is inf epochs, which floor() refuses
        more = math.floor(min(left / pace, self.epochs)) if pace else self.epochs
        planned = max(done, min(self.epochs, done + max(0, more)))
        if len(self.seconds) > RECENT:
            planned = min(planned, max(self.planned + 1, math.floor(self.planned * (1 + GROWTH))))
        self.planned = planned
        return self.planned

    def record(self) -> dict:
        """What the run's info keeps: the plan and the pace it came from."""
        pace = self.pace()
        return {"planned_epochs": self.planned, "max_epochs": self.epochs, "max_time": self.max_time,
                "seconds_per_epoch": round(pace, 4) if pace is not None else None}

    def state_dict(self) -> dict:
        return {"planned": self.planned, "seconds": list(self.seconds), "elapsed": self.elapsed}

    def load_state_dict(self, state: dict) -> None:
        self.planned, self.seconds = int(state["planned"]), [float(s) for s in state["seconds"]]
        self.elapsed = float(state["elapsed"])


def make_plan(training: TrainingConfig, launcher: object | None) -> EpochPlan | None:
    """The plan for a TrainingConfig with plan_to_max_time, None without; a one-line error where it cannot plan."""
    if not training.plan_to_max_time:
        return None
    if not training.max_time:
        raise LoopmlError("training.plan_to_max_time plans the epochs into training.max_time: set training.max_time "
                          "(seconds)")
    if launcher is not None:  # each rank would time (and plan, and set its lr) on its own: they must agree
        raise LoopmlError("training.plan_to_max_time does not work with --ray: the workers would plan apart; "
                          "set plan_to_max_time: false")
    return EpochPlan(training.max_time, training.epochs)
