"""Distillation: a small network (the student) trained on a teacher model's soft targets, as a new bundle.

``loopml compress MODEL --distill --student bag|bilstm|mlp|CONFIG.yaml [--unlabelled FILE]``

- The teacher is any loopml model: its scores (logits, or standardised numbers: what ``Target.decode``
  reads) label the rows of its own training split, and the optional unlabelled rows. Validation and
  test rows are never labelled by it: the student is early-stopped on the teacher's validation rows
  (hard labels) and measured on the teacher's test rows, so the trade-off compares like with like.
- The student: ``bag`` / ``bilstm`` are loopml's text encoders for every text column (the other
  columns keep loopml's defaults), ``mlp`` is loopml's default network for the columns, or a training
  config (features / combiner / training sections) whose target is the teacher's. The ``bag`` reads its
  columns with ``tokenizer: tfidf`` (word 1-2-gram and char 2-5-gram TF-IDF weights): on ag_news it
  distils to about 0.89 where a bag of word tokens stays at 0.86 (bench/results/distill_tfidf*.md).
- The loss is train/soft_targets.py's (``training.distill`` in the student's config): the trainer's
  target carries the teacher's scores beside the hard label; unlabelled rows have no hard label.
- The student is an ordinary network bundle: its config (with ``training.distill``) and the teacher's
  split record (so retrain, monitor and compress read the same rows again); retraining it is plain
  training on the labels. Its evaluation holds the trade-off table (tradeoff.py), teacher vs student.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from loopml.errors import LoopmlError, did_you_mean

STUDENTS = ("bag", "bilstm", "mlp")
#: the preset students' text encoders (loopml/models/encoders.py); ``mlp`` keeps loopml's default for each column
TEXT_ENCODERS = {"bag": "bag", "bilstm": "bilstm"}


def check_student(value: str) -> str:
    """``value`` if it names a preset student or an existing config file; else a one-line LoopmlError."""
    if value in STUDENTS:
        return value
    path = Path(value)
    if path.suffix.lower() in (".yaml", ".yml", ".json") or path.exists():
        if not path.is_file():
            raise LoopmlError(f"student config not found: {value}")
        return value
    raise LoopmlError(f"unknown --student '{value}'{did_you_mean(value, STUDENTS)}; choose one of: "
                      f"{', '.join(STUDENTS)}, or a YAML training config file")


def student_name(student: str) -> str:
    return student if student in STUDENTS else Path(student).stem


# -- the student's config ------------------------------------------------------------------------
def student_config(student: str, teacher, temperature: float = 2.0, alpha: float = 0.5, training: dict | None = None,
                   init: str = "random"):
    """The student's Config: a preset or a config file, checked against the teacher's task, with ``training.distill``;
    ``training``: settings over the student's training section (epochs, optimizer, ...); ``init`` other than
    random: its text columns read the teacher's tokenizer (static_embeddings.py)."""
    from loopml.compress.static_embeddings import STATIC_DIM, WIDTH_SETTING, check_init, teacher_models
    from loopml.config import load_config, read_yaml

    borrowed = teacher_models(teacher) if check_init(init) != "random" else {}

    # the teacher's rebalancing (sampling, synthesize) stays with the teacher: each student row needs its soft target
    target = {k: v for k, v in teacher.config.target.model_dump(mode="json").items()
              if k not in ("sampling", "sampling_ratio", "synthesize")}
    if student in STUDENTS:
        features = {}
        for column, feature in teacher.preprocessor.features.items():
            kind = feature.config.type
            features[column] = {"type": kind, **({"encoder": TEXT_ENCODERS[student]}
                                                 if kind == "text" and student in TEXT_ENCODERS else {})}
            if kind == "text" and student == "bag" and column not in borrowed:
                features[column]["tokenizer"] = "tfidf"  # a TF-IDF-weighted bag of word and char n-grams
            if column in borrowed:  # mlp: loopml's default text encoder, the bag
                encoder = TEXT_ENCODERS.get(student, "bag")
                features[column] |= {"pretrained_tokenizer": borrowed[column],
                                     "encoder": {"type": encoder, WIDTH_SETTING[encoder]: STATIC_DIM}}
        raw: dict[str, Any] = {"target": target, "data": teacher.config.data.model_dump(mode="json"),
                               "split": teacher.config.split.model_dump(mode="json"), "features": features,
                               "training": {"seed": teacher.config.training.seed}}
    else:
        raw = dict(read_yaml(student, "student config", "features, combiner, training, ..."))
        raw["target"] = _student_target(raw.get("target"), target)
        raw.setdefault("data", teacher.config.data.model_dump(mode="json"))
        raw.setdefault("split", teacher.config.split.model_dump(mode="json"))
        for column, feature in (raw.get("features") or {}).items():
            if column in borrowed and isinstance(feature, dict) and feature.get("type") == "text":
                if feature.get("tokenizer") == "tfidf":
                    raise LoopmlError(f"student config: column '{column}' has tokenizer: tfidf, but --student-init "
                                      f"{init} starts its embeddings from the teacher's tokens; drop one of the two")
                raw["features"][column] = {"pretrained_tokenizer": borrowed[column], **feature}
    training = {**dict(raw.get("training") or {}), **(training or {})}
    training["distill"] = {"temperature": temperature, "alpha": alpha}
    raw["training"] = training
    try:
        config = load_config(raw)
    except LoopmlError as e:
        raise LoopmlError(f"student config: {e}") from None
    _check_fits(config, teacher)
    return config


def _student_target(value: Any, teacher_target: dict) -> dict:
    """The teacher's target, with the student config's own target settings when it names the same column."""
    if value is None:
        return teacher_target
    mine = {"column": value} if isinstance(value, str) else dict(value)
    if mine.get("column") != teacher_target["column"]:
        raise LoopmlError(f"student config: target '{mine.get('column')}' is not the teacher's target "
                          f"'{teacher_target['column']}'")
    return {**teacher_target, **mine}


def _check_fits(config, teacher) -> None:
    kind, mine = teacher.preprocessor.target.kind, config.target.type
    if mine not in ("auto", kind):
        raise LoopmlError(f"student config: target type {mine} does not fit the teacher's {kind} target")
    if config.learner.type != "network":
        raise LoopmlError(f"student config: learner {config.learner.type} cannot be distilled into; the student is a "
                          "network (learner: network)")
    if config.target.sampling != "none":
        raise LoopmlError("student config: target.sampling does not combine with distillation (it would resample "
                          "the rows away from their soft targets)")
    if config.target.synthesize is not None:
        raise LoopmlError("student config: target.synthesize does not combine with distillation (synthetic rows "
                          "have no soft targets); remove it")
    inputs = list(teacher.preprocessor.features)
    for column in config.features:
        if column not in inputs:
            raise LoopmlError(f"student config: column '{column}' is not an input of the teacher"
                              f"{did_you_mean(column, inputs)}; its inputs: {', '.join(inputs)}")


# -- the teacher's soft targets -------------------------------------------------------------------
def teacher_scores(teacher, frame: pd.DataFrame, target) -> np.ndarray:
    """The teacher's scores for ``frame`` in the student's output space (train/soft_targets.py's layout):
    class log-probabilities in the student's class order, the positive class's logit, or the prediction
    standardised as the student's target."""
    from loopml.features.base import canonical_key

    if target.kind == "number":
        predicted = np.asarray(teacher.predict(frame), dtype=np.float64)
        return ((predicted - target.state["mean"]) / target.state["std"]).reshape(-1, 1)
    scores = np.asarray(teacher.scores(frame), dtype=np.float64)
    theirs = {canonical_key(c): i for i, c in enumerate(teacher.preprocessor.target.classes)}
    order = [theirs.get(canonical_key(c)) for c in target.classes]
    if None in order:
        raise LoopmlError("the teacher and the student disagree on the classes")
    if target.kind == "binary":
        logit = scores.reshape(-1)
        return (logit if order == [0, 1] else -logit).reshape(-1, 1)
    z = scores - scores.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return log_p[:, order]


def read_unlabelled(path: str | Path, teacher) -> pd.DataFrame:
    """The unlabelled rows: the teacher's input columns (a target column, if any, is ignored)."""
    from loopml.data.read import read_table

    if not Path(path).is_file():
        raise LoopmlError(f"unlabelled file not found: {path}")
    frame = read_table(str(path), teacher.config.data)
    inputs = list(teacher.preprocessor.features)
    missing = [c for c in inputs if c not in frame.columns]
    if missing:
        raise LoopmlError(f"unlabelled file {Path(path).name} lacks the teacher's input column '{missing[0]}'"
                          f"{did_you_mean(missing[0], [str(c) for c in frame.columns])}")
    return frame[inputs].reset_index(drop=True)


# -- training the student -------------------------------------------------------------------------
def fit_student(teacher, config, frames: dict[str, pd.DataFrame], unlabelled: pd.DataFrame | None = None,
                progress: bool = False, init: str = "random"):
    """The student (a fitted loopml Model) trained on ``frames`` (the teacher's train/validation/test rows):
    soft targets on the training rows and ``unlabelled``; validation and test as they are; ``init``: where
    its token embeddings start (static_embeddings.py)."""
    import torch

    import loopml
    from loopml.compress.static_embeddings import EmbeddingInit, init_tables
    from loopml.train import default_callbacks
    from loopml.train.run import RunOptions, train
    from loopml.train.soft_targets import combine

    column = teacher.preprocessor.target.column
    labelled_rows = frames["train"].reset_index(drop=True)
    rows = labelled_rows
    if unlabelled is not None and len(unlabelled):
        # the target stands in for prepare's checks only: these rows train on the soft term alone
        extra = unlabelled.copy()
        extra[column] = teacher.predict(extra)
        rows = pd.concat([labelled_rows, extra], ignore_index=True)
    test = frames.get("test")
    has_test = test is not None and len(test) > 0
    if not has_test:  # no test rows to carve from the teacher's training rows either
        config = config.model_copy(update={"split": config.split.model_copy(update={"test": 0.0})})
    student = loopml.Model(config)
    prepared = student._prepare(rows, frames["validation"], test if has_test else None, cache_dir=False)
    raw = prepared.raw("train", config)
    labelled = torch.as_tensor(raw.index.to_numpy() < len(labelled_rows))
    scores = teacher_scores(teacher, raw, prepared.preprocessor.target)
    soft = combine(prepared.splits["train"].target, labelled, torch.from_numpy(scores))
    tables = init_tables(teacher, config, init)
    options = RunOptions(progress=progress, make_callbacks=default_callbacks, soft_targets=soft,
                         callbacks=[EmbeddingInit(tables)] if tables else [])
    student._apply(train(config, prepared, options))
    student.info["distillation"] = {
        "teacher_learner": _learner_name(teacher), "labelled_rows": int(labelled.sum()),
        "unlabelled_rows": int((~labelled).sum()), "temperature": config.training.distill.temperature,
        "alpha": config.training.distill.alpha, "student_init": init,
    }
    if set(student.preprocessor.features) == set(teacher.preprocessor.features) and teacher.info.get("splits"):
        # the same rows as the teacher's record: retrain / compress / monitor read them again from its file
        student.info["splits"] = teacher.info["splits"]
        student.info["data_source"] = teacher.info.get("data_source")
    return student


def _learner_name(model) -> str:
    from loopml.serve.runner import learner_name

    return learner_name(model)


# -- the whole command ------------------------------------------------------------------------------
def distill(teacher, folder: Path, source: dict, student: str, output: Path, *, unlabelled: str | None = None,
            temperature: float = 2.0, alpha: float = 0.5, force: bool = False, data: str | None = None,
            store: Any = None, register: str | None = None, rounds: dict[int, int] | None = None,
            echo: Any = None, threads: int = 1, frames: dict[str, pd.DataFrame] | None = None,
            training: dict | None = None, init: str = "random"):
    """Distil ``teacher`` (read from ``folder``; ``source``: name and version, or the folder's name) into the
    student bundle ``output``; prints the trade-off table, one line per row. ``frames``: the teacher's splits
    when the caller has them already; ``training``: settings over the student's training section."""
    from loopml.compress.quantize import check_output, original_splits

    check_student(student)
    output = Path(output).expanduser()
    check_output(output, force, folder)
    config = student_config(student, teacher, temperature, alpha, training, init)
    extra = read_unlabelled(unlabelled, teacher) if unlabelled is not None else None
    frames = frames or original_splits(teacher, source.get("name"), store, data)
    test_split = "test" if len(frames.get("test", [])) else "validation"
    if not len(frames[test_split]):
        raise LoopmlError("the teacher has no test or validation rows to measure the trade-off on")
    fitted = fit_student(teacher, config, frames, extra, init=init)
    return write_student(teacher, folder, source, fitted, student_name(student), output, frames, force=force,
                         store=store, register=register, rounds=rounds, echo=echo, threads=threads)


def write_student(teacher, folder: Path, source: dict, fitted, name: str, output: Path, frames: dict[str, pd.DataFrame],
                  *, force: bool = False, store: Any = None, register: str | None = None,
                  rounds: dict[int, int] | None = None, echo: Any = None, threads: int = 1):
    """The trade-off table (teacher vs the fitted student, on the teacher's test rows) and the student's bundle."""
    from loopml.compress.output import register_model, sizes, write_model
    from loopml.compress.quantize import Compressed
    from loopml.compress.tradeoff import network_bytes, tradeoff

    test_split = "test" if len(frames.get("test", [])) else "validation"
    method = f"distill-{name}"
    with tempfile.TemporaryDirectory(prefix="loopml-distill-") as work:
        fitted.learner.save(Path(work))
        student_network = network_bytes(Path(work), ["model.safetensors"])
    facts = {"method": method, "student": name, "from": source, **fitted.info["distillation"]}
    new_sizes = sizes(method, folder, teacher.info["manifest"], fitted, student_network)
    labels = (f"teacher ({facts['teacher_learner']})", f"student ({name}, distilled)")
    table = {**tradeoff(teacher, fitted, frames[test_split], test_split, new_sizes, rounds=rounds, threads=threads,
                        labels=labels), "facts": facts}
    written = write_model(fitted, table, "distillation", facts, output, force=force, echo=echo)
    version = None
    if register is not None:
        version = register_model(store, register, written, source, method=method, kind="distilled",
                                 learner="network", retrains_as=None)
    return Compressed(written, table, version)


def distill_command(model: str, student: str | None, *, unlabelled: str | None, temperature: float, alpha: float,
                    output: Path | None, register: str | None, force: bool, data: str | None, store: str | None,
                    artifacts: str | None, echo: Any, init: str = "random") -> None:
    """``loopml compress MODEL --distill ...``: arguments checked before anything is loaded, then ``distill``."""
    import loopml
    from loopml.compress.compress_cli import echo_result, open_source
    from loopml.compress.static_embeddings import check_init

    if student is None:
        raise LoopmlError(f"--distill needs --student: one of {', '.join(STUDENTS)}, or a YAML training config file")
    check_student(student)
    check_init(init)
    if not 0 <= alpha <= 1:
        raise LoopmlError(f"--alpha must be between 0 and 1, not {alpha:g}")
    if not 0 < temperature <= 1000:  # T^2 of an infinite (or huge) temperature is a NaN loss
        raise LoopmlError(f"--temperature must be positive and at most 1000, not {temperature:g}")
    if unlabelled is not None and not Path(unlabelled).is_file():
        raise LoopmlError(f"unlabelled file not found: {unlabelled}")
    method = f"distill-{student_name(student)}"
    folder, source, output, opened = open_source(model, method, output, force, register, store, artifacts)
    teacher = loopml.load(folder)
    result = distill(teacher, folder, source, student, output, unlabelled=unlabelled, temperature=temperature,
                     alpha=alpha, force=force, data=data, store=opened, register=register, echo=echo, init=init)
    echo_result(result, "distilled model", echo)
