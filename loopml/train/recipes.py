"""Defaults chosen from the data and the time budget: for the keys the user did not set, and only those.

A recipe (registered by name in ``RECIPES``; ``recipe_media.py`` holds the image and audio ones)
looks at the data as inferred (train/recipe_probe.py: column types, image size/channels, clip rates
and lengths, rows, classes), the time budget and the machine, and proposes settings, each with a
reason. ``apply_recipe`` keeps the proposals for keys the config does not set (pydantic's
``model_fields_set``, nested; a user's value always wins), validates the result as the config the
run trains with, and returns it with a ``Choice`` that prints as one readable block. The resolved
config saved in the bundle then sets every key, so retraining from it (``loopml retrain``, ``loopml
train --config <bundle>/config.yaml``) chooses nothing new. Tabular and text data get no change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from loopml.config import Config, load_config, resolve_feature
from loopml.plugins import Registry
from loopml.train.recipe_probe import DataProfile, Machine, detect_machine, probe

#: the default time budget's reference: this many rows of 32x32 images (or clip-seconds of audio) get FULL_BUDGET
REFERENCE_IMAGE_WORK = 10_000 * 32 * 32
REFERENCE_AUDIO_SECONDS = 10_000.0
FULL_BUDGET = 900.0
MIN_BUDGET = 60.0


@dataclass
class Setting:
    #: where it goes: ("training", "scheduler", "type") or ("features", <column>, "augment", "flip")
    path: tuple[str, ...]
    value: Any
    reason: str

    @property
    def key(self) -> str:
        return ".".join(self.path)


@dataclass
class TimeBudget:
    #: None: no limit (``training.max_time: null`` set explicitly)
    seconds: float | None
    #: where it comes from: training.max_time, --time-budget, or the default rule
    source: str


@dataclass
class Choice:
    """What a recipe chose: the settings applied, those the config already set, and those this loopml lacks."""

    recipes: list[str]
    summary: str
    budget: TimeBudget
    applied: list[Setting] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    unavailable: list[str] = field(default_factory=list)

    def describe(self) -> str:
        if not self.applied:  # a resolved config (a retrain, a bundle's config.yaml): nothing new is chosen
            return f"defaults for {self.summary}: none chosen, the config sets all {len(self.kept)} keys a recipe would"
        lines = [f"defaults for {self.summary}, budget {_duration(self.budget.seconds)} ({self.budget.source}):"]
        width = max(len(s.key) for s in self.applied)
        lines += [f"  {s.key:<{width}}  {_shown(s.value)}  -- {s.reason}" for s in self.applied]
        if self.kept:
            more = f" (+{len(self.kept) - 8} more)" if len(self.kept) > 8 else ""
            lines.append(f"  kept from the config: {', '.join(self.kept[:8])}{more}")
        if self.unavailable:
            lines.append(f"  not in this loopml (skipped): {', '.join(self.unavailable)}")
        return "\n".join(lines)

    def record(self) -> dict:
        return {"recipes": self.recipes, "summary": self.summary,
                "budget": {"seconds": self.budget.seconds, "source": self.budget.source},
                "settings": [{"key": s.key, "value": s.value, "reason": s.reason} for s in self.applied],
                "kept": self.kept, "unavailable": self.unavailable, "printed": self.describe()}


class Recipe:
    """Proposes settings for one kind of data; ``applies`` says whether it is that kind."""

    registered_name: str

    @classmethod
    def applies(cls, profile: DataProfile, config: Config) -> bool:
        raise NotImplementedError

    @classmethod
    def summary(cls, profile: DataProfile) -> str:
        raise NotImplementedError

    @classmethod
    def work_budget(cls, profile: DataProfile) -> float:
        """Seconds the default rule gives this data."""
        raise NotImplementedError

    @classmethod
    def settings(cls, profile: DataProfile, machine: Machine, budget: TimeBudget, config: Config) -> list[Setting]:
        raise NotImplementedError


RECIPES: Registry[type[Recipe]] = Registry("recipe")


# -- the entry point --------------------------------------------------------------------------------
def apply_recipe(config: Config, data: Any, validation: Any = None, test: Any = None,
                 machine: Machine | None = None, warm_start: bool = False) -> tuple[Config, Choice | None]:
    """``config`` with the recipes' settings for the keys it leaves unset, and what was chosen (None:
    no recipe applies, e.g. tabular or text data, ``recipe: none``, or data too large to probe).
    ``warm_start``: the feature sections are left as they are (the network must match the one it starts from)."""
    if config.recipe == "none" or config.learner.type not in ("network", "automl"):
        return config, None
    if config.training.privacy is not None:  # DP-SGD: epochs, batches and mixing all change the privacy spend
        return config, None
    profile = probe(config, data, validation, test)
    if profile is None:
        return config, None
    recipes = [cls for _, cls in RECIPES if cls.applies(profile, config)]
    if not recipes:
        return config, None
    machine = machine or detect_machine(config.training.device)
    choice = choose(config, profile, machine, recipes, warm_start)
    return apply_choice(config, profile, choice), choice


def time_budget(config: Config, profile: DataProfile, recipes: list[type[Recipe]]) -> TimeBudget:
    """The user's (``training.max_time``, else ``automl.time_budget``), else the default rule: FULL_BUDGET
    seconds for 10,000 32x32 images (rows x pixels) or 10,000 clip-seconds, in proportion below that,
    at least MIN_BUDGET."""
    if "max_time" in config.training.model_fields_set:
        limit = config.training.max_time
        return TimeBudget(None if limit is None else float(limit), "training.max_time")
    if config.automl.time_budget is not None:
        return TimeBudget(float(config.automl.time_budget), "--time-budget")
    seconds = max(recipe.work_budget(profile) for recipe in recipes)
    seconds = float(min(FULL_BUDGET, max(MIN_BUDGET, 10 * math.ceil(seconds / 10))))
    return TimeBudget(seconds, "default for this data size; set training.max_time to change")


def choose(config: Config, profile: DataProfile, machine: Machine, recipes: list[type[Recipe]],
           warm_start: bool = False) -> Choice:
    budget = time_budget(config, profile, recipes)
    summary = "; ".join(recipe.summary(profile) for recipe in recipes)
    choice = Choice([r.registered_name for r in recipes], summary, budget)
    seen: set[tuple[str, ...]] = set()
    # pretrained or warm-started encoders and preprocessing: their feature sections must stay as trained
    features_fixed_by = "training.init_from" if config.training.init_from is not None else \
        "warm start" if warm_start else None
    for recipe in recipes:
        for setting in recipe.settings(profile, machine, budget, config):
            if setting.path in seen:  # two recipes on one key (images and audio in one table): the first wins
                continue
            seen.add(setting.path)
            if setting.path[0] == "features" and features_fixed_by:
                choice.kept.append(f"{setting.key} ({features_fixed_by})")
                continue
            if setting.path == ("training", "mixup") and config.training.distill is not None:
                continue  # a teacher's soft targets are per row: mixing rows would need mixed teacher scores
            for state, piece in _split_into_unset(config, profile, setting):
                if state == "unset":
                    choice.applied.append(piece)
                elif state == "set":
                    choice.kept.append(piece.key)
                else:
                    choice.unavailable.append(piece.key)
    return choice


def apply_choice(config: Config, profile: DataProfile, choice: Choice) -> Config:
    if not choice.applied:
        return config
    raw = config.model_dump(mode="json", exclude_unset=True)
    for setting in choice.applied:
        node = raw
        path = setting.path
        if path[0] == "features":
            features = node.setdefault("features", {})
            column = path[1]
            if column not in features:  # an inferred column: its section as it would resolve, then the recipe's keys
                kind = profile.columns[column]
                features[column] = {**_resolved(config, profile, column).model_dump(mode="json", exclude_unset=True),
                                    "type": kind}
            node, path = features[column], path[2:]
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = setting.value
    return load_config(raw)


# -- which keys the config leaves unset -------------------------------------------------------------
def _resolved(config: Config, profile: DataProfile, column: str) -> BaseModel:
    return resolve_feature(config, profile.columns[column], config.features.get(column))


def _split_into_unset(config: Config, profile: DataProfile, setting: Setting) -> list[tuple[str, Setting]]:
    """``setting`` as (state, setting) parts: state is unset, set (the user's value wins) or unknown (no such
    key here). A section the user set with the same ``type`` (e.g. ``encoder: resnet``) is filled key by key."""
    if setting.path[0] == "features":
        root: BaseModel = _resolved(config, profile, setting.path[1])
        prefix, path = setting.path[:2], setting.path[2:]
    else:
        root, prefix, path = config, (), setting.path
    node: Any = root
    for i, part in enumerate(path):
        if not isinstance(node, BaseModel) or part not in type(node).model_fields:
            return [("unknown", setting)]
        if part not in node.model_fields_set:
            return [("unset" if _exists(getattr(node, part), path[i + 1:], setting.value) else "unknown", setting)]
        node = getattr(node, part)
        if i == len(path) - 1:
            if isinstance(setting.value, dict) and isinstance(node, BaseModel) \
                    and getattr(node, "type", None) == setting.value.get("type", getattr(node, "type", None)):
                parts = []
                for key, value in setting.value.items():
                    if key != "type":
                        sub = Setting((*prefix, *path, key), value, setting.reason)
                        parts += _split_into_unset(config, profile, sub)
                return parts
            return [("set", setting)]
    return [("set", setting)]


def _exists(default: Any, rest: tuple[str, ...], value: Any) -> bool:
    """Whether the ``rest`` of a path leads through the unset section ``default`` to a field, and every key of a
    section-valued setting is a field of the section it replaces (a None default: taken as is)."""
    for part in rest:
        if not isinstance(default, BaseModel) or part not in type(default).model_fields:
            return False
        default = getattr(default, part)
    if not isinstance(value, dict) or not isinstance(default, BaseModel):
        return True
    if "type" in value and value["type"] != getattr(default, "type", value["type"]):
        return True  # another section type (another encoder): validation checks its keys
    return all(k in type(default).model_fields for k in value)


def _shown(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_shown(v)}" for k, v in value.items()) + "}"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "none"
    return f"{seconds / 60:g} min" if seconds >= 120 and seconds % 60 == 0 else f"{seconds:g} s"


from loopml.train import recipe_media  # noqa: E402,F401  (registers the image and audio recipes)
