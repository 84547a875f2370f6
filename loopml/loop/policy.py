"""The retraining policy (YAML): when to retrain, on what, and what a candidate must beat."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator

from loopml.errors import LoopmlError
from loopml.features.base import StrictModel

#: the largest count a policy takes: counts end up in SQL LIMITs (SQLite: 64-bit) and list repeats
MAX_COUNT = 10**9


class Trigger(StrictModel):
    #: retrain once this many new feedback labels arrived since the last decision
    min_feedback: int = Field(200, ge=1, le=MAX_COUNT)
    #: retrain when the latest monitoring window flagged drift (and some feedback exists)
    on_drift: bool = True
    #: retrain when live accuracy on feedback falls below this
    live_accuracy_below: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)


class DataPolicy(StrictModel):
    #: the champion's training data (default: the file it was trained from)
    training_data: str | None = None
    #: the folder the feedback's image/audio paths are relative to: the server's --media-root
    #: (default: the champion's data.media_root, else the working directory; --media-root overrides it)
    media_root: str | None = None
    #: each feedback row counts this many times in training
    feedback_weight: int = Field(1, ge=1, le=1000)  # the feedback frame is repeated this many times in memory
    #: the share of feedback held back to judge candidate vs champion
    holdout_fraction: float = Field(0.3, gt=0, lt=1, allow_inf_nan=False)
    #: which labels are held back: ``spread`` — evenly over the order they arrived in (every third label at 0.3), so the
    #: judged labels come from the same ranks of the queue and the same time span as the learned ones; ``newest`` —
    #: the latest share (traffic that drifts within the labelling period; under a queue, its lowest-ranked picks)
    holdout: Literal["spread", "newest"] = "spread"
    min_holdout: int = Field(30, ge=1, le=MAX_COUNT)


class Gate(StrictModel):
    metric: Literal["accuracy", "balanced_accuracy", "f1_macro", "f1", "roc_auc", "r2"] = "accuracy"
    #: the candidate must beat the champion on the held-back feedback by at least this much
    margin: float = Field(0.01, ge=0, allow_inf_nan=False)
    #: and be right significantly more often there (one-sided McNemar test)
    significance: float = Field(0.05, gt=0, lt=1, allow_inf_nan=False)
    #: and lose at most this much of the metric on the champion's original test set
    max_test_regression: float = Field(0.01, ge=0, allow_inf_nan=False)


class Rollout(StrictModel):
    """How a candidate that passed the gate takes over: at once, beside the champion (shadow), or on a share
    of traffic (canary); then a watch period in which a worse new champion is rolled back by itself."""

    mode: Literal["direct", "shadow", "canary"] = "direct"
    #: canary: the sticky share of requests the candidate answers
    percent: float = Field(10.0, gt=0, lt=100, allow_inf_nan=False)
    #: shadow / canary: live labels on the candidate's own predictions needed before it is promoted
    min_live_labels: int = Field(50, ge=1, le=MAX_COUNT)
    #: shadow / canary: a trial without enough live labels by then is ended (rejected), so it cannot block
    #: retraining for ever (e.g. the candidate failed to load on the server, or no labels arrive)
    trial_max_s: float = Field(86400.0, ge=1, allow_inf_nan=False)  # under a second no label could ever arrive
    #: after promotion: how long the new champion is watched, and how many live labels the watch needs
    watch_s: float = Field(3600.0, ge=0, allow_inf_nan=False)  # an endless watch would never record "kept"; 0 = none
    watch_min_labels: int = Field(50, ge=1, le=MAX_COUNT)
    #: roll back when the new champion's live metric is below the previous one's by this much, significantly
    watch_margin: float = Field(0.02, ge=0, allow_inf_nan=False)
    significance: float = Field(0.05, gt=0, lt=1, allow_inf_nan=False)

    @field_validator("watch_s")
    @classmethod
    def _watch_long_enough(cls, watch_s: float) -> float:
        # a watch of a few milliseconds ends before any label can arrive: it would record "kept" unjudged
        if 0 < watch_s < MIN_INTERVAL_S:
            raise ValueError(f"must be 0 (no watch) or at least {MIN_INTERVAL_S:g} s")
        return watch_s

    @field_validator("percent")
    @classmethod
    def _percent_only_with_canary(cls, percent: float, info: ValidationInfo) -> float:
        # a share of traffic means nothing to shadow (all requests) or direct (none): refuse it, not ignore it
        mode = info.data.get("mode")
        if mode is not None and mode != "canary":  # (None: mode itself was invalid, and says so)
            raise ValueError(f"only a canary takes a percent (this rollout is {mode}): drop it, or set mode: canary")
        return percent

    @classmethod
    def parse_short(cls, raw: Any) -> Any:
        """``rollout: shadow`` / ``rollout: canary(10)`` / ``rollout: direct`` as well as the full mapping."""
        if not isinstance(raw, str):
            return raw
        text = raw.strip().lower()
        match = re.fullmatch(r"canary\(\s*([0-9]+\.?[0-9]*|\.[0-9]+)\s*%?\s*\)", text)
        if match:
            return {"mode": "canary", "percent": float(match.group(1))}
        if text in ("direct", "shadow", "canary"):
            return {"mode": text}
        raise ValueError("rollout must be direct, shadow, canary or canary(PERCENT)")


#: the longest loop interval (a year): longer ones overflow the clock and the waits (inf, 1e300)
MAX_INTERVAL_S = 365 * 24 * 3600.0
#: the shortest loop interval (and watch): each cycle reads the store and takes its lock; faster is a busy loop
MIN_INTERVAL_S = 1.0


class Schedule(StrictModel):
    """The unattended worker's cadence (``loopml loop``)."""

    #: seconds between two cycles (monitor → rollouts → trigger → retrain → gate → promote)
    interval_s: float = Field(60.0, ge=MIN_INTERVAL_S, le=MAX_INTERVAL_S, allow_inf_nan=False)
    #: predictions each cycle's drift check looks at (the newest)
    monitor_rows: int = Field(5000, ge=10, le=MAX_COUNT)


class Policy(StrictModel):
    alias: str = Field("production", min_length=1)
    #: scratch = refit preprocessing and weights; warm = keep the champion's preprocessing and start
    #: from its weights (fine-tuning: cannot learn category values the champion never saw)
    start: Literal["scratch", "warm"] = "scratch"
    #: champion = the candidate uses the champion's learner choice (its config's ``learner:`` section; for an
    #: AutoML champion, the learner it chose); automl = run AutoML again (``automl.time_budget`` of the
    #: champion's config, or set it in ``train``)
    learner: Literal["champion", "automl"] = "champion"
    trigger: Trigger = Trigger()
    data: DataPolicy = DataPolicy()
    gate: Gate = Gate()
    rollout: Rollout = Rollout()
    loop: Schedule = Schedule()
    #: config overrides for the candidate, e.g. {training: {epochs: 20}}
    train: dict = {}

    @field_validator("rollout", mode="before")
    @classmethod
    def _short_rollout(cls, raw: Any) -> Any:
        return Rollout.parse_short(raw)

    @field_validator("train")
    @classmethod
    def _keeps_split_and_target(cls, train: dict) -> dict:
        # the candidate must train on the champion's split (its test rows never trained on) and predict its target
        fixed = [key for key in ("split", "target") if key in train]
        if fixed:
            raise ValueError(f"'{fixed[0]}' cannot be overridden: a candidate keeps the champion's {fixed[0]}")
        return train


def load_policy(source: str | Path | dict | None) -> Policy:
    if source is None:
        return Policy()
    from loopml.config import describe_error, read_yaml

    raw = source if isinstance(source, dict) else read_yaml(source, "policy", "alias, trigger, data, gate, rollout, loop, train")
    if not isinstance(source, dict) and not raw and _empty(Path(source)):
        # an empty file is a mistake (a truncated copy, the wrong path), not a request for every default
        raise LoopmlError(f"policy file {source} is empty (give at least one section: alias, trigger, data, gate, "
                          "rollout, loop, train; `{}` means every default)")
    try:
        return Policy.model_validate(raw)
    except ValidationError as e:
        raise LoopmlError(describe_error(e, Policy, "policy")) from None


def _empty(path: Path) -> bool:
    """Nothing but whitespace and comments (YAML reads it as null); ``{}`` is not empty."""
    import yaml

    return yaml.safe_load(path.read_text(encoding="utf-8")) is None
