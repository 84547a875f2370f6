"""The one config schema. YAML in, JSON Schema out; every stage reads its own section.

Feature sections are built from the feature-type registry and each type's ``encoder`` field
from the encoder registry, so registering a class is all it takes to appear here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, Field, ValidationError, create_model, field_validator, model_validator
from pydantic_core import PydanticCustomError

from loopml.data.read import DataConfig
from loopml.data.split import SplitConfig
from loopml.errors import LoopmlError, did_you_mean
from loopml.features import FEATURE_TYPES, StrictModel
from loopml.learners import LEARNERS
from loopml.models import COMBINERS, DEFAULT_ENCODERS, ENCODERS


def _tagged_union(classes: list[type[BaseModel]]) -> Any:
    if len(classes) == 1:
        return classes[0]
    return Annotated[Union[tuple(classes)], Field(discriminator="type")]  # noqa: UP007


def _name_to_section(value: Any) -> Any:
    """Lets a config say ``encoder: bilstm`` for ``encoder: {type: bilstm}``."""
    return {"type": value} if isinstance(value, str) else value


def _feature_model(type_name: str, ftype: type) -> type[BaseModel]:
    encoders = [cls.Params for _, cls in ENCODERS if type_name in cls.feature_types]
    if not encoders:
        return ftype.Config
    default = ENCODERS.get(DEFAULT_ENCODERS[type_name]).Params
    return create_model(
        f"{type_name.title()}Feature",
        __base__=ftype.Config,
        __validators__={"_encoder_name": field_validator("encoder", mode="before")(_name_to_section)},
        encoder=(_tagged_union(encoders), Field(default_factory=default)),
    )


FEATURE_MODELS: dict[str, type[BaseModel]] = {name: _feature_model(name, ft) for name, ft in FEATURE_TYPES}
FeatureConfig = _tagged_union(list(FEATURE_MODELS.values()))
CombinerConfig = _tagged_union([cls.Params for _, cls in COMBINERS])
LearnerConfig = _tagged_union([cls.Params for _, cls in LEARNERS])


class AutoMLConfig(StrictModel):
    """``loopml train --time-budget S [--preset fast|best]``: choose, tune and ensemble learners in S seconds."""

    #: wall-clock seconds for the whole fit, preprocessing included; None = AutoML off
    time_budget: float | None = Field(None, gt=0, allow_inf_nan=False)
    preset: Literal["fast", "best"] = "best"

#: per-type defaults applied to every column of that type before its own section
DefaultsConfig = create_model(
    "DefaultsConfig",
    __base__=StrictModel,
    **{name: (model | None, None) for name, model in FEATURE_MODELS.items() if name != "skip"},
)


class SynthesizeConfig(StrictModel):
    """Synthetic minority-class training rows from a conditional VAE fitted on the training split (tabular only)."""

    method: Literal["cvae"] = "cvae"
    #: synthesise until each class has at least this fraction of the majority class's rows
    ratio: float = Field(1.0, gt=0, le=1)
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(512, ge=1)
    lr: float = Field(2e-3, gt=0)
    hidden: int = Field(128, ge=1)
    latent: int = Field(16, ge=1)
    #: None = training.seed
    seed: int | None = None


class OutputConfig(StrictModel):
    column: str
    type: Literal["auto", "binary", "category", "number"] = "auto"
    #: auto = inverse class frequency; or {class: weight}
    class_weights: Literal["auto"] | dict[str, float] | None = None
    #: the class whose probability is the score for binary metrics (default: the second in sort order)
    positive_class: str | int | None = None
    #: standardise a regression target while training
    normalize: bool = True
    #: rebalance the training split: random over/undersampling, or SMOTE (tabular features only)
    sampling: Literal["none", "oversample", "undersample", "smote"] = "none"
    #: after sampling, each class has at least (oversample, smote) / at most (undersample) this
    #: fraction of the majority (minority) class's rows
    sampling_ratio: float = Field(1.0, gt=0, le=1)
    #: synthetic rows for the minority classes (``{method: cvae, ratio: 0.5}``); not with sampling
    synthesize: SynthesizeConfig | None = None
    #: binary: probability of the positive class from which it is predicted; auto = tuned on the
    #: validation split to maximise threshold_metric, then saved and used at predict
    threshold: float | Literal["auto"] = Field(0.5, description="0..1 or auto")
    threshold_metric: Literal["f1", "balanced_accuracy", "accuracy", "mcc", "precision", "recall"] = "f1"

    @field_validator("class_weights", mode="before")
    @classmethod
    def _class_names_as_text(cls, value: Any) -> Any:
        # YAML reads `{0: 1, 1: 5}` with integer keys: the class labels 0 and 1, as in the data
        return {str(k): v for k, v in value.items()} if isinstance(value, dict) else value

    @field_validator("synthesize", mode="before")
    @classmethod
    def _method_name(cls, value: Any) -> Any:
        return {"method": value} if isinstance(value, str) else value  # `synthesize: cvae`

    @model_validator(mode="after")
    def _one_rebalancing(self) -> OutputConfig:
        if self.synthesize is not None and self.sampling != "none":
            raise ValueError("target.synthesize does not combine with target.sampling; choose one")
        return self

    @field_validator("threshold")
    @classmethod
    def _threshold_range(cls, value: Any) -> Any:
        if isinstance(value, float) and not 0.0 < value < 1.0:
            raise ValueError("threshold must be between 0 and 1 (exclusive), or auto")
        return value


class OptimizerConfig(StrictModel):
    type: Literal["adam", "adamw", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    momentum: float = Field(0.9, ge=0)
    nesterov: bool = False


class SchedulerConfig(StrictModel):
    #: onecycle: from lr/25 up to lr over warmup_epochs (30% of the epochs when 0), then cosine down to min_lr
    type: Literal["none", "step", "cosine", "plateau", "onecycle"] = "plateau"
    #: epoch: the lr changes once per epoch; step: after every optimizer step (warm-up included), a smooth curve
    interval: Literal["epoch", "step"] = "epoch"
    #: epochs of linear warm-up from lr/10, before the schedule proper (may be fractional: 0.5 = half an epoch)
    warmup_epochs: float = Field(0, ge=0, allow_inf_nan=False)
    step_size: int = Field(10, ge=1)
    gamma: float = Field(0.5, gt=0, le=1)
    patience: int = Field(2, ge=0)
    factor: float = Field(0.5, gt=0, lt=1)
    min_lr: float = Field(1e-6, ge=0)

    @model_validator(mode="after")
    def _plateau_per_epoch(self) -> SchedulerConfig:
        # plateau reacts to the validation loss, which exists once per epoch
        if self.type == "plateau" and self.interval == "step":
            raise ValueError("scheduler type plateau follows the validation loss, measured once per epoch: "
                             "use interval: epoch, or type cosine / onecycle with interval: step")
        if self.type == "plateau" and self.warmup_epochs != int(self.warmup_epochs):
            raise ValueError(f"scheduler type plateau warms up in whole epochs (warmup_epochs "
                             f"{self.warmup_epochs:g}): use a whole number, or type cosine / onecycle")
        return self


class EarlyStoppingConfig(StrictModel):
    #: a validation metric: loss, accuracy, roc_auc, f1_macro, r2, mae, ... (loss by default)
    metric: str = "loss"
    #: epochs without improvement before stopping; 0 turns early stopping off
    patience: int = Field(5, ge=0)
    min_delta: float = Field(0.0, ge=0)


class DistillConfig(StrictModel):
    """Distillation's loss (``loopml compress --distill``): alpha * hard-label loss + (1 - alpha) * soft term,
    the soft term T^2 * KL(teacher || student) at temperature T (MSE to the teacher's prediction for a number).
    Used only where the training target carries a teacher's scores; plain training otherwise (a retrain)."""

    #: at most 1000: T^2 of an infinite (or huge) temperature makes a NaN loss
    temperature: float = Field(2.0, gt=0, le=1000)
    alpha: float = Field(0.5, ge=0, le=1)


class PrivacyConfig(StrictModel):
    """DP-SGD (Opacus): per-row gradients clipped to ``max_grad_norm``, Gaussian noise added, rows drawn by
    Poisson sampling; the noise is set so the whole training spends ``target_epsilon`` at ``delta``."""

    # above ε = 100 (a likelihood ratio of e^100) there is no guarantee left, and Opacus's noise search stops converging
    target_epsilon: float = Field(..., gt=0, le=100, allow_inf_nan=False, description="the privacy budget ε the "
                                  "training may spend (smaller: more private, noisier; at most 100); the noise "
                                  "multiplier is chosen to reach it")
    delta: float = Field(1e-5, gt=0, lt=1, description="δ of the (ε, δ) guarantee: the chance the ε bound fails; "
                         "keep it well below 1 / training rows")
    max_grad_norm: float = Field(1.0, gt=0, le=1e6, allow_inf_nan=False, description="each row's gradient is "
                                 "clipped to this L2 norm before noise is added (replaces training.grad_clip)")
    accountant: Literal["rdp", "prv"] = Field("rdp", description="Opacus's privacy accountant: rdp (Rényi DP) "
                                              "or prv (privacy random variables, tighter)")
    earlier: list[tuple[float, float, int]] = Field(
        [], description="set by loopml retrain: (noise multiplier, sample rate, steps) of the earlier versions "
        "in this model's lineage, composed with this training's into the cumulative ε; leave empty")
    earlier_without_dp: bool = Field(False, description="set by loopml retrain: an earlier version in the "
                                     "lineage trained on these rows without DP (no cumulative guarantee)")

    @field_validator("earlier")
    @classmethod
    def _accountant_steps(cls, earlier: list[tuple[float, float, int]]) -> list[tuple[float, float, int]]:
        for sigma, q, steps in earlier:  # the accountant takes them as given: a negative count lowers the cumulative ε
            if not (0 < sigma < float("inf") and 0 < q <= 1 and steps >= 1):
                raise ValueError(f"each entry is (noise multiplier > 0, sample rate in (0, 1], steps >= 1), "
                                 f"not ({sigma:g}, {q:g}, {steps})")
        return earlier


class MixupConfig(StrictModel):
    """Batch-level mixing of image inputs (loopml/train/mixing.py); classification, image-only networks."""

    #: mixup's Beta(alpha, alpha) for the mixing weight (0 = no mixup)
    alpha: float = Field(0.2, ge=0, allow_inf_nan=False)
    #: cutmix's Beta(a, a) for the kept area (0 = no cutmix); both > 0: each mixed batch picks one, 50/50
    cutmix_alpha: float = Field(0.0, ge=0, allow_inf_nan=False)
    #: the chance that a training batch is mixed
    prob: float = Field(1.0, ge=0, le=1)

    @model_validator(mode="after")
    def _one_method(self) -> MixupConfig:
        if self.alpha == 0 and self.cutmix_alpha == 0:
            raise ValueError("training.mixup needs alpha > 0 (mixup) or cutmix_alpha > 0 (cutmix); "
                             "to turn mixing off remove training.mixup")
        return self


class EmaConfig(StrictModel):
    """An exponential moving average of the weights (loopml/train/ema.py), updated after every optimizer step."""

    #: average <- decay * average + (1 - decay) * weights; 0.999 averages over about the last 1,000 steps
    decay: float = Field(0.999, gt=0, lt=1)


#: label smoothing spreads probability over classes; a number target has none (also checked once the type is inferred)
LABEL_SMOOTHING_NUMBER = ("training.label_smoothing is for classification: a number target (regression) has no "
                          "classes to smooth towards; set it to 0")
#: mixup mixes labels as it mixes images; a number target has none (also checked once the type is inferred)
MIXUP_NUMBER = "training.mixup mixes class labels; this target is a number (regression): remove training.mixup"


class TrainingConfig(StrictModel):
    epochs: int = Field(50, ge=1)
    batch_size: int = Field(128, ge=1)
    eval_batch_size: int = Field(2048, ge=1)
    optimizer: OptimizerConfig = OptimizerConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    grad_clip: float | None = Field(1.0, gt=0)
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    seed: int = 42
    #: torch CPU threads; None = torch's default
    threads: int | None = Field(None, ge=1)
    #: stop after this many seconds (the best checkpoint so far is kept)
    max_time: float | None = Field(None, gt=0)
    #: with max_time: after each epoch, plan how many epochs fit the time left (at most ``epochs``) and end the
    #: schedule (cosine, onecycle) at the last planned one, so the lr has annealed when time is up
    plan_to_max_time: bool = False
    #: classification: the loss's target keeps 1 - s of its weight and spreads s over the classes (binary: the
    #: 0/1 target moves s/2 towards 0.5), e.g. 0.1; 0 = off
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)
    #: the loss mixes hard labels with a teacher's soft targets (set by ``loopml compress --distill``)
    distill: DistillConfig | None = None
    #: where the network trains: auto (CUDA when available, else the CPU), cpu, cuda, cuda:N or mps
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda|cuda:\d+|mps)$")
    #: mixed precision (autocast): bf16 works on CPUs and recent GPUs; fp16 (with loss scaling) needs a GPU
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    #: torch.compile the network (falls back to eager with a warning if compiling fails); off by default:
    #: on a CPU its first-epoch cost outweighs the speed-up for loopml's small networks (bench/scale.py)
    compile: bool = False
    #: differential privacy: train with DP-SGD to a privacy budget (loopml/train/privacy.py); None: ordinary training
    privacy: PrivacyConfig | None = None
    #: start the network's encoders (and combiner) from a folder `loopml pretrain --method scarf|simclr` wrote;
    #: its fitted preprocessing is adopted for the same columns (a warm start's weights take precedence)
    init_from: str | None = None
    #: mix image inputs batch by batch: ``{alpha: 0.2}`` mixup, ``{cutmix_alpha: 1.0}`` cutmix, both: either, 50/50;
    #: classification with image inputs only; training metrics are computed against the un-mixed labels
    mixup: MixupConfig | None = None
    #: ``{decay: 0.999}``: validate, choose the best epoch and save an exponential moving average of the weights
    ema: EmaConfig | None = None
    #: channels_last memory format for the network's conv layers and the image batches (faster convs on
    #: CPUs with AMX/avx512 and on GPUs, mostly with bf16); saved weights and exports are unaffected
    channels_last: bool = False

    @model_validator(mode="after")
    def _private_settings(self) -> TrainingConfig:
        if self.privacy is not None:
            if self.precision != "fp32":
                raise ValueError(f"training.privacy needs training.precision: fp32 (not {self.precision})")
            if self.compile:
                raise ValueError("training.privacy does not work with training.compile: set compile: false")
            if self.distill is not None:
                raise ValueError("training.privacy does not combine with distillation (training.distill)")
            if self.mixup is not None:  # a mixed row carries two rows' data: DP-SGD's per-row clipping bounds neither
                raise ValueError("training.privacy does not combine with training.mixup (a mixed row holds two rows)")
        return self

    @field_validator("device", mode="before")
    @classmethod
    def _device_setting(cls, value: Any) -> Any:
        from loopml.train.device import check_device_setting  # lazy: loopml.train imports this module

        if not isinstance(value, str):
            return value
        try:
            return check_device_setting(value)
        except LoopmlError as e:
            raise PydanticCustomError("device", str(e)) from None

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_setting(cls, value: Any) -> Any:
        choices = ("fp32", "bf16", "fp16")
        if isinstance(value, str) and value.strip().lower() in choices:
            return value.strip().lower()
        raise PydanticCustomError("precision", f"precision {value!r} is not one of {', '.join(choices)}"
                                  f"{did_you_mean(str(value).lower(), choices)}")


class Config(StrictModel):
    target: OutputConfig
    data: DataConfig = DataConfig()
    split: SplitConfig = SplitConfig()
    #: per-column settings; columns not listed are inferred
    features: dict[str, FeatureConfig] = {}
    #: columns the model must not use
    exclude: list[str] = []
    defaults: DefaultsConfig = DefaultsConfig()
    combiner: CombinerConfig = Field(default_factory=lambda: COMBINERS.get("concat").Params())
    training: TrainingConfig = TrainingConfig()
    #: which learner fits the prepared features (the network by default); ``learner: lightgbm`` works too
    learner: LearnerConfig = Field(default_factory=lambda: LEARNERS.get("network").Params())
    automl: AutoMLConfig = AutoMLConfig()
    #: auto: image and audio data get the settings this config leaves unset chosen from the data, the time
    #: budget and the machine (loopml/train/recipes.py; printed at the start of training); none: plain defaults
    recipe: Literal["auto", "none"] = "auto"

    @field_validator("target", mode="before")
    @classmethod
    def _target_shortcut(cls, value: Any) -> Any:
        return {"column": value} if isinstance(value, str) else value

    @model_validator(mode="before")
    @classmethod
    def _automl_learner(cls, raw: Any) -> Any:
        """``automl: {time_budget: S}`` without a ``learner`` means ``learner: automl``; its preset comes from ``automl``."""
        if not isinstance(raw, dict) or not isinstance(raw.get("automl"), dict):
            return raw
        automl = raw["automl"]
        learner = raw.get("learner")
        if learner is None and automl.get("time_budget") is not None:
            learner = "automl"
        if learner == "automl" or (isinstance(learner, dict) and learner.get("type") == "automl"):
            section = {"type": "automl"} if isinstance(learner, str) else dict(learner)
            if "preset" in automl:
                section.setdefault("preset", automl["preset"])
            raw = {**raw, "learner": section}
        return raw

    @field_validator("combiner", "learner", mode="before")
    @classmethod
    def _combiner_shortcut(cls, value: Any) -> Any:
        return _name_to_section(value)

    @model_validator(mode="after")
    def _plan_has_time(self) -> Config:
        training = self.training
        # --time-budget caps max_time (learners/network.py), so the budget is enough to plan into
        if training.plan_to_max_time and training.max_time is None and self.automl.time_budget is None:
            raise ValueError("training.plan_to_max_time plans the epochs into training.max_time: set "
                             "training.max_time (seconds)")
        return self

    @model_validator(mode="after")
    def _classification_only(self) -> Config:
        # an inferred number target is refused once the type is known (api.py, train/mixing.py check)
        if self.training.label_smoothing and self.target.type == "number":
            raise ValueError(LABEL_SMOOTHING_NUMBER)
        if self.training.mixup is not None and self.target.type == "number":
            raise ValueError(MIXUP_NUMBER)
        return self

    @model_validator(mode="after")
    def _private_learner(self) -> Config:
        if self.training.privacy is None:
            return self
        if self.learner.type != "network":
            raise ValueError(f"training.privacy trains the network learner with DP-SGD; learner {self.learner.type} "
                             "has no private training: set learner: network")
        if self.target.sampling != "none" or getattr(self.target, "synthesize", None) is not None:
            raise ValueError("training.privacy counts each training row once: target.sampling and target.synthesize "
                             "copy or model rows outside the DP-SGD guarantee; use target.class_weights instead")
        return self

    @field_validator("learner")
    @classmethod
    def _trainable_learner(cls, value: Any) -> Any:
        if LEARNERS.get(value.type).derived:
            raise ValueError(f"learner {value.type} is made by `loopml compress` from a trained network, not trained "
                             "from a config; train learner: network and compress it")
        return value


def json_schema() -> dict:
    return Config.model_json_schema()


def feature_config(type_name: str, settings: dict | None = None) -> BaseModel:
    """A column's full section: the type's defaults, then ``settings`` on top."""
    return _validate(FEATURE_MODELS[type_name], {**(settings or {}), "type": type_name})


def resolve_feature(config: Config, type_name: str, override: BaseModel | None) -> BaseModel:
    base = getattr(config.defaults, type_name, None) if type_name != "skip" else None
    merged = base.model_dump(exclude_unset=True) if base is not None else {}
    if override is not None:
        merged.update(override.model_dump(exclude_unset=True))
    return feature_config(type_name, merged)


def load_config(source: str | Path | dict | None = None, **overrides: Any) -> Config:
    """Validate a YAML file or dict (plus keyword overrides) into a Config, or raise LoopmlError."""
    if source is None:
        raw: dict = {}
    elif isinstance(source, dict):
        raw = source
    else:
        raw = read_yaml(source, "config", "target, features, training, ...")
    check_depth(raw, "config")
    raw = _deep_merge(raw, {k: v for k, v in overrides.items() if v is not None})
    if "target" not in raw:
        raise LoopmlError("no target: pass --target COLUMN or set 'target:' in the config")
    return _validate(Config, raw)


def read_yaml(source: str | Path, what: str, sections: str) -> dict:
    """A YAML file holding a mapping, or a one-line LoopmlError naming the problem."""
    path = Path(source)
    if path.is_dir():
        raise LoopmlError(f"{what} {source} is a directory, not a YAML file")
    if not path.is_file():
        raise LoopmlError(f"{what} file not found: {source}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise LoopmlError(f"{what} {path.name} is not valid YAML{where}") from None
    except UnicodeDecodeError as e:
        raise LoopmlError(f"{what} {path.name} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start})") from None
    except RecursionError:  # the YAML composer recurses once per level of nesting
        raise LoopmlError(f"{what} {path.name} nests too deeply (at most {MAX_DEPTH} levels)") from None
    if not isinstance(raw, dict):
        raise LoopmlError(f"{what} {path.name} must be a mapping of sections ({sections})")
    check_depth(raw, f"{what} {path.name}")
    return raw


#: far more than any real config needs, far less than Python's recursion limit (validation recurses)
MAX_DEPTH = 32
#: values counted with repeats: YAML anchors can expand a small file exponentially ("billion laughs")
MAX_VALUES = 100_000


def check_depth(value: Any, what: str) -> None:
    """A one-line error for mappings/lists nested deeper than MAX_DEPTH, or holding more than
    MAX_VALUES values once anchors are expanded (iterative: cannot overflow the stack)."""
    stack = [(value, 0, "")]
    seen = 0
    while stack:
        node, depth, where = stack.pop()
        seen += 1
        if depth > MAX_DEPTH:
            raise LoopmlError(f"{what} nests more than {MAX_DEPTH} levels deep (at {where.lstrip('.')[:80]}...)")
        if seen > MAX_VALUES:
            raise LoopmlError(f"{what} holds more than {MAX_VALUES:,} values (anchors counted each time they are used)")
        if isinstance(node, dict):
            stack.extend((v, depth + 1, f"{where}.{k}") for k, v in node.items())
        elif isinstance(node, list | tuple):
            stack.extend((v, depth + 1, f"{where}[{i}]") for i, v in enumerate(node))


def _deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _validate(model: type[BaseModel], raw: dict) -> Any:
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        raise LoopmlError(describe_error(e, model)) from None


def describe_error(error: ValidationError, model: type[BaseModel], what: str = "config") -> str:
    """One line for the first error: ``config training.epochs: ...``; ``what`` names the file kind (policy)."""
    first = error.errors()[0]
    valid, loc = _walk(model.model_json_schema(), [str(part) for part in first["loc"]])
    where = ".".join(loc)
    at = f"{what} {where}" if where else what  # "config training.epochs", or "config" for a whole-config check
    kind = first["type"]
    if kind == "extra_forbidden":
        return f"unknown {what} key '{where}'{did_you_mean(loc[-1], valid)}"
    if kind == "union_tag_not_found":
        return f"{at}: 'type' is required"
    if kind == "union_tag_invalid":
        ctx = first.get("ctx", {})
        names = [t.strip(" '") for t in ctx.get("expected_tags", "").split(",")]
        return f"{what} {where}.type: '{ctx.get('tag')}' is not one of {', '.join(names)}{did_you_mean(ctx.get('tag'), names)}"
    got = first.get("input")
    shown = f" (got {json.dumps(got)[:60]})" if got is not None and not isinstance(got, dict) else ""
    message = first["msg"]
    if kind in ("value_error", "assertion_error") and first.get("ctx", {}).get("error") is not None:
        # a validator's own sentence, without pydantic's "Value error, " in front; one that names its key (or a
        # whole-config check, which has no key) reads as it is
        message = str(first["ctx"]["error"])
        if not where or message.startswith(where):
            return f"{message}{shown}"
    return f"{at}: {message}{shown}"


def _walk(schema: dict, loc: list[str]) -> tuple[set[str], list[str]]:
    """Follow an error location through a JSON schema (refs, dicts, tagged unions).

    Returns the keys valid at the parent of the last part, and the location without the
    union tags pydantic inserts (``features.age.number.x`` -> ``features.age.x``).
    """
    defs = schema.get("$defs", {})

    def options(node: dict) -> list[dict]:
        while "$ref" in node:
            node = defs[node["$ref"].split("/")[-1]]
        alternatives = node.get("oneOf") or node.get("anyOf")
        return [o for alt in alternatives for o in options(alt)] if alternatives else [node]

    nodes, clean, parent_keys = [schema], [], set()
    for part in loc:
        current = [o for n in nodes for o in options(n)]
        tagged = [o for o in current if o.get("properties", {}).get("type", {}).get("const") == part]
        if tagged:
            nodes = tagged
            continue
        parent_keys = {key for o in current for key in o.get("properties", {})}
        clean.append(part)
        nodes = [o["properties"][part] for o in current if part in o.get("properties", {})] or [
            o["additionalProperties"] for o in current if isinstance(o.get("additionalProperties"), dict)
        ]
    return parent_keys, clean
