"""The Python API: ``Model(...).fit(df)``, ``.evaluate``, ``.predict``, ``.predict_proba``, ``.save``, ``load``."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml

from loopml.bundle import read_bundle, write_bundle
from loopml.config import Config, load_config
from loopml.data.read import Source, read_table
from loopml.errors import LoopmlError, did_you_mean
from loopml.evaluate.analysis import class_balance, evaluate_split, score, score_one
from loopml.evaluate.explain import explain_rows, importance_metric, permutation_importance
from loopml.evaluate.threshold import tune_threshold
from loopml.features.pipeline import Preprocessor
from loopml.models import FeatureSlot, LoopModel
from loopml.prepare import Prepared, prepare
from loopml.schema import Schema
from loopml.train import Trainer, default_callbacks, predict_batches
from loopml.train.sampling import resample
from loopml.train.threads import ThreadShare
from loopml.train.trainer import TensorData

#: in a checkpoint folder: the tracked run it belongs to, so --resume continues that run
RUN_FILE = "run.json"
CLASSIFICATION_MONITORS = ("loss", "accuracy", "balanced_accuracy", "f1_macro", "f1_weighted", "roc_auc", "log_loss")
REGRESSION_MONITORS = ("loss", "mae", "rmse", "mse", "r2")


class Model:
    """A loopml model. ``Model(target="income")`` or ``Model("config.yaml")`` or ``Model({...})``."""

    def __init__(self, config: str | os.PathLike | dict | Config | None = None, *, target: str | None = None,
                 **sections: Any) -> None:
        if isinstance(config, Config):
            self.config = config
        else:
            self.config = load_config(config, target=target, **sections)
        self.preprocessor: Preprocessor | None = None
        self.network: LoopModel | None = None
        self.schema: Schema | None = None
        self.history: list[dict] = []
        self.metrics: dict = {}
        self.info: dict = {}
        #: what the report draws: data summary, per-split predictions and worst errors, importance
        self.evaluation: dict = {}
        #: training-data statistics that drift monitoring compares live inputs with
        self.reference: dict = {}
        #: the tracked run of the last fit (``fit(track=...)``), with the store that holds it
        self.run_id: str | None = None
        self._store = None
        #: values read as missing by the last predict/evaluate call with ``coerce=True``, per column
        self.last_coerced: dict[str, int] = {}
        self._initial_weights: dict | None = None

    # -- training --------------------------------------------------------------------------------
    def fit(
        self, data: Source, *, validation: Source | None = None, test: Source | None = None,
        checkpoint_dir: str | os.PathLike | None = None, resume: bool = False, progress: bool | None = None,
        cache_dir: str | os.PathLike | None | bool = None, track: bool | str = False, store: object | None = None,
        warm_start: Model | None = None,
    ) -> Model:
        """Train. ``track=True`` (or an experiment name) records the run in the registry store:
        params, per-epoch metrics, final metrics, status; ``save()`` then attaches the model.
        ``warm_start``: keep that model's preprocessing and start from its weights (fine-tuning).

        Problems with the input (files, columns, config) surface before a run is recorded.
        With ``resume`` a tracked run continues the run recorded in ``checkpoint_dir``.
        Like scikit-learn's ``fit``, every call starts from a clean slate: nothing fitted before is kept.
        """
        if warm_start is self:  # its fitted parts must outlive the reset below
            warm_start = copy.copy(self)
        self._reset()
        prepared, monitor = self._prepare(data, validation, test, cache_dir)
        if warm_start is not None:
            prepared = self._adopt(prepared, warm_start)
        if not track:
            return self._train(prepared, monitor, checkpoint_dir, resume, progress, [])
        from loopml.registry import Store
        from loopml.registry.tracking import RunLogger

        self._store = store if isinstance(store, Store) else Store(store)
        experiment = track if isinstance(track, str) else self.config.target.column
        self.run_id = self._continued_run(checkpoint_dir, resume) or self._store.start_run(
            experiment, self.config.model_dump(mode="json"))
        if checkpoint_dir:
            _write_json_atomic(Path(checkpoint_dir) / RUN_FILE, {"run_id": self.run_id, "store": self._store.url})
        try:
            self._train(prepared, monitor, checkpoint_dir, resume, progress, [RunLogger(self._store, self.run_id)])
        except KeyboardInterrupt:
            self._store.end_run(self.run_id, "killed", error="interrupted")
            raise
        except BaseException as e:
            self._store.end_run(self.run_id, "failed", error=f"{type(e).__name__}: {e}"[:2000])
            raise
        self._store.end_run(self.run_id, "finished", self.metrics_summary(), data_fingerprint=self.info["data_fingerprint"])
        return self

    def _reset(self) -> None:
        """Forget everything an earlier fit (or warm start) left, as scikit-learn's estimators do."""
        self.preprocessor = self.network = self.schema = None
        self.history, self.metrics, self.info, self.evaluation, self.reference = [], {}, {}, {}, {}
        self.run_id, self._store = None, None
        self._initial_weights = None

    def _continued_run(self, checkpoint_dir, resume: bool) -> str | None:
        """The run recorded with the checkpoint being resumed, marked running again; None to start a new one."""
        if not (resume and checkpoint_dir):
            return None
        try:
            recorded = json.loads((Path(checkpoint_dir) / RUN_FILE).read_text(encoding="utf-8"))["run_id"]
        except (OSError, ValueError, KeyError, TypeError):
            return None  # a checkpoint from an untracked run (or an older loopml): the resumed run is new
        return recorded if isinstance(recorded, str) and self._store.resume_run(recorded) else None

    def metrics_summary(self) -> dict:
        """The scalar metrics per split (what the registry keeps)."""
        return {split: {k: v for k, v in m.items() if isinstance(v, (int, float))} for split, m in self.metrics.items()}

    def _prepare(self, data, validation, test, cache_dir) -> tuple[Prepared, str]:
        prepared = prepare(self.config, data, validation, test,
                           cache_dir=False if cache_dir is False else (Path(cache_dir) if cache_dir else None))
        self.schema, self.preprocessor = prepared.schema, prepared.preprocessor
        target_cfg = self.config.target
        if target_cfg.sampling != "none" and self.schema.target_kind == "number":
            raise LoopmlError("target.sampling is for classification; this target is a number")
        if target_cfg.threshold != 0.5 and self.schema.target_kind != "binary":
            raise LoopmlError(f"target.threshold is for binary targets; this target is {self.schema.target_kind}")
        return prepared, self._check_monitor()

    def _adopt(self, prepared: Prepared, start: Model) -> Prepared:
        """Re-encode every split with ``start``'s fitted preprocessing, so its weights fit this model."""
        from loopml.data.split import SPLITS

        start._require_trained()
        pre = Preprocessor.from_dict(start.preprocessor.to_dict())
        if list(pre.features) != list(self.preprocessor.features) or pre.target.column != self.preprocessor.target.column:
            raise LoopmlError("warm start needs the same input columns and target as the model it starts from")
        for name in SPLITS:
            frame = prepared.raw(name, self.config)
            prepared.splits[name] = TensorData(pre.transform(frame), pre.transform_target(frame)) \
                if frame is not None and len(frame) else None
        prepared.preprocessor = self.preprocessor = pre
        self._initial_weights = start.network.state_dict()
        return prepared

    def _train(self, prepared: Prepared, monitor: str, checkpoint_dir, resume, progress, extra_callbacks) -> Model:
        # threads: this process's fair share of its CPUs, unless set explicitly (train/threads.py)
        with ThreadShare(self.config.training.threads) as threads:
            return self._train_network(prepared, monitor, checkpoint_dir, resume, progress, [*extra_callbacks, threads])

    def _train_network(self, prepared: Prepared, monitor: str, checkpoint_dir, resume, progress, extra_callbacks) -> Model:
        cfg = self.config.training
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.manual_seed(cfg.seed)
        self.network = build_network(self.preprocessor, self.config, self._class_weights(prepared))
        initial = self._initial_weights
        if initial is not None:  # warm start; the class-weight buffer follows this run's config
            weights = {k: v for k, v in initial.items() if k != "head.class_weights"}
            try:
                missing = self.network.load_state_dict(weights, strict=False).missing_keys
            except RuntimeError:
                missing = ["(shapes differ)"]
            if [k for k in missing if k != "head.class_weights"]:
                raise LoopmlError("warm start needs the same model architecture as the model it starts from")
        callbacks = default_callbacks(
            monitor, cfg.early_stopping.patience, cfg.early_stopping.min_delta,
            Path(checkpoint_dir) if checkpoint_dir else None, progress is not False,
        ) + list(extra_callbacks)
        trainer = Trainer(self.network, cfg, callbacks, metric_fn=self._epoch_metrics(monitor))
        resumed = False
        if resume:
            if not checkpoint_dir:
                raise LoopmlError("resume needs a checkpoint directory")
            resumed = trainer.resume(Path(checkpoint_dir))
        target_cfg = self.config.target
        train = prepared.splits["train"]
        if target_cfg.sampling != "none":
            kinds = {col: f.config.type for col, f in self.preprocessor.features.items()}
            train = resample(train, target_cfg.sampling, target_cfg.sampling_ratio, cfg.seed, kinds)
        self.history = trainer.fit(train, prepared.splits["validation"])
        self.network.eval()
        outputs = {name: trainer.predict(split.inputs) for name, split in prepared.splits.items()
                   if split is not None and name != "train"}
        self._set_threshold(outputs["validation"], prepared.splits["validation"].target)
        self.metrics = {name: self._score(out, prepared.splits[name].target) for name, out in outputs.items()}
        self.evaluation = self._fit_evaluation(prepared, outputs, monitor, len(train))
        best = next(cb for cb in callbacks if hasattr(cb, "best_epoch"))
        self.info = {
            "data_source": _source_path(prepared.sources.get("data")),
            "data_fingerprint": prepared.fingerprint,
            "data_report": prepared.report,
            "splits": _split_record(prepared, self.config, self.preprocessor),
            "training": {"epochs_run": trainer.epoch, "best_epoch": best.best_epoch, "monitor": monitor,
                         "stop_reason": trainer.stop_reason or "epochs done", "seconds": trainer.elapsed,
                         "resumed": resumed},
        }
        return self

    def _check_monitor(self) -> str:
        metric = self.config.training.early_stopping.metric
        valid = REGRESSION_MONITORS if self.schema.target_kind == "number" else CLASSIFICATION_MONITORS
        if metric not in valid:
            raise LoopmlError(
                f"training.early_stopping.metric '{metric}' is not available for a {self.schema.target_kind} "
                f"target{did_you_mean(metric, valid)}; choose one of: {', '.join(valid)}"
            )
        return metric

    def _set_threshold(self, val_outputs: torch.Tensor, val_target: torch.Tensor) -> None:
        """Binary: the decision threshold, fixed by the config or tuned on the validation split."""
        t, setting = self.preprocessor.target, self.config.target.threshold
        t.state.pop("threshold", None)
        if t.kind != "binary":
            return
        if setting == "auto":
            p1 = t.decode(val_outputs.numpy())[1][:, 1]
            t.state["threshold"] = tune_threshold(val_target.long().numpy(), p1, self.config.target.threshold_metric)
        elif setting != 0.5:
            t.state["threshold"] = float(setting)

    def _fit_evaluation(self, prepared: Prepared, outputs: dict[str, torch.Tensor], monitor: str, train_rows: int) -> dict:
        splits = {name: split for name, split in prepared.splits.items() if split is not None}
        evaluations = {
            name: evaluate_split(self.preprocessor, name, out.numpy(), splits[name].target.numpy(), splits[name].inputs,
                                 prepared.raw(name, self.config))
            for name, out in outputs.items()
        }
        metric = importance_metric(self.schema.target_kind, monitor)
        importance = permutation_importance(self.network, splits["validation"], self._metric_scorer(metric), metric,
                                            seed=self.config.training.seed)
        data = {"sizes": {name: len(split) for name, split in splits.items()}, "train_rows_after_sampling": train_rows,
                "class_balance": class_balance(self.preprocessor, {n: s.target for n, s in splits.items()})}
        self.reference = self._reference(prepared, outputs)
        return {"data": data, "evaluations": evaluations, "importance": importance}

    def _reference(self, prepared: Prepared, outputs: dict[str, torch.Tensor]) -> dict:
        """Training-data statistics for drift monitoring (kept in the model directory as reference.json)."""
        from loopml.loop.drift import reference

        frame = prepared.raw("train", self.config)
        if frame is None:
            return {}
        held_out = outputs.get("test", outputs["validation"])
        predictions = self.preprocessor.target.decode(held_out.numpy())[0]
        kinds = {col: f.config.type for col, f in self.preprocessor.features.items()}
        return reference(frame, kinds, predictions, self.preprocessor.target.classes or None)

    def _class_weights(self, prepared: Prepared) -> list[float] | None:
        setting = self.config.target.class_weights
        target = self.preprocessor.target
        if setting is None or target.kind == "number":
            return None
        classes = [str(c) for c in target.classes]
        if setting == "auto":
            counts = np.bincount(prepared.splits["train"].target.long().numpy(), minlength=len(classes))
            return (len(prepared.splits["train"]) / (len(classes) * np.maximum(counts, 1))).tolist()
        unknown = [k for k in setting if k not in classes]
        if unknown:
            raise LoopmlError(f"target.class_weights names unknown class '{unknown[0]}'{did_you_mean(unknown[0], classes)}")
        return [float(setting.get(c, 1.0)) for c in classes]

    def _epoch_metrics(self, monitor: str):
        def metric_fn(outputs: torch.Tensor, target: torch.Tensor) -> dict:
            scores = self._score(outputs, target, full=monitor not in ("loss", "accuracy", "r2"))
            keep = {"accuracy", "r2", monitor}
            return {k: v for k, v in scores.items() if k in keep}

        return metric_fn

    def _score(self, outputs: torch.Tensor, target: torch.Tensor, full: bool = True) -> dict:
        t = self.preprocessor.target
        if not full and t.kind != "number":
            proba = t.decode(outputs.numpy())[1]
            return {"accuracy": float((proba.argmax(1) == target.long().numpy()).mean())}
        return score(self.preprocessor, outputs.numpy(), target.numpy())

    def _metric_scorer(self, metric: str):
        """Scores ``metric`` alone: permutation importance needs one number ~50 times, not every metric."""
        def scorer(outputs: torch.Tensor, target: torch.Tensor) -> dict:
            return {metric: score_one(self.preprocessor, outputs.numpy(), target.numpy(), metric)}

        return scorer

    # -- using a trained model ---------------------------------------------------------------------
    def _require_trained(self) -> None:
        if self.network is None:
            raise LoopmlError("the model is not trained yet: call fit() or loopml.load()")

    def _read_inputs(self, data: Source, coerce: bool) -> pd.DataFrame:
        """The table, with values the model cannot read refused (or, with ``coerce``, read as missing)."""
        from loopml.data.validate import check_inputs

        self._require_trained()
        df, self.last_coerced = check_inputs(read_table(data, self.config.data), self.preprocessor.features, coerce)
        return df

    def _outputs(self, data: Source, coerce: bool = False) -> tuple[pd.DataFrame, torch.Tensor]:
        df = self._read_inputs(data, coerce)
        self.network.eval()
        return df, predict_batches(self.network, self.preprocessor.transform(df), self.config.training.eval_batch_size)

    def evaluate(self, data: Source, coerce: bool = False) -> dict:
        """Metrics on labelled data (rows without a label are ignored). A value an input column
        cannot hold (``old`` in a number column) is an error, or with ``coerce=True`` a missing
        value, counted per column in ``last_coerced``."""
        _, inputs, target = self._labelled(data, coerce)
        return self._score(predict_batches(self.network.eval(), inputs, self.config.training.eval_batch_size), target)

    def evaluation_of(self, data: Source, name: str = "data", coerce: bool = False) -> dict:
        """Metrics plus what the report draws (scores, worst errors) for labelled data."""
        df, inputs, target = self._labelled(data, coerce)
        outputs = predict_batches(self.network.eval(), inputs, self.config.training.eval_batch_size)
        return evaluate_split(self.preprocessor, name, outputs.numpy(), target.numpy(), inputs, df)

    def _labelled(self, data: Source, coerce: bool = False) -> tuple[pd.DataFrame, dict[str, torch.Tensor], torch.Tensor]:
        df = self._read_inputs(data, coerce)
        target = self.preprocessor.target.column
        if target not in df.columns:
            raise LoopmlError(f"data has no target column '{target}' to evaluate against")
        df = df[df[target].notna()]
        if not len(df):
            raise LoopmlError(f"data has no rows with a '{target}' label to evaluate against")
        return df, self.preprocessor.transform(df), self.preprocessor.transform_target(df)

    def feature_importance(self, data: Source | None = None, repeats: int = 5, seed: int = 0) -> dict:
        """Permutation importance on labelled ``data`` (default: the validation split, from training)."""
        if data is None:
            if "importance" not in self.evaluation:
                raise LoopmlError("no stored importance: pass labelled data")
            return self.evaluation["importance"]
        _, inputs, target = self._labelled(data)
        metric = importance_metric(self.schema.target_kind, self.config.training.early_stopping.metric)
        return permutation_importance(self.network, TensorData(inputs, target), self._metric_scorer(metric), metric,
                                      repeats, seed)

    def explain(self, data: Source, rows: list[int] | None = None, n_steps: int = 32) -> list[dict]:
        """Integrated-gradients attributions for some rows of ``data`` (default: the first 5)."""
        df = self._read_inputs(data, coerce=False)  # the same values as predict reads, or an error
        rows = list(range(min(5, len(df)))) if rows is None else rows
        bad = [r for r in rows if not 0 <= r < len(df)]
        if bad:
            raise LoopmlError(f"row {bad[0]} is out of range: the data has {len(df)} rows (0..{len(df) - 1})")
        return explain_rows(self.network, self.preprocessor, df.iloc[rows], n_steps)

    def predict(self, data: Source, coerce: bool = False) -> np.ndarray:
        """Labels (or numbers). A value an input column cannot hold (``old`` in a number column, a
        third value in a binary one, ``inf``) is a LoopmlError naming column, row and value; with
        ``coerce=True`` such values are read as missing and counted per column in ``last_coerced``."""
        _, outputs = self._outputs(data, coerce)
        return self.preprocessor.target.decode(outputs.numpy())[0]

    def predict_proba(self, data: Source, coerce: bool = False) -> pd.DataFrame:
        _, outputs = self._outputs(data, coerce)
        target = self.preprocessor.target
        if target.kind == "number":
            raise LoopmlError("predict_proba is for classifiers; this model predicts a number")
        return pd.DataFrame(target.decode(outputs.numpy())[1], columns=[str(c) for c in target.classes])

    def predictions(self, data: Source, coerce: bool = False) -> pd.DataFrame:
        """One row per input: the prediction and, for classifiers, a probability per class."""
        _, outputs = self._outputs(data, coerce)
        target = self.preprocessor.target
        labels, proba = target.decode(outputs.numpy())
        out = pd.DataFrame({f"{target.column}_prediction": labels})
        if proba is not None:
            for i, c in enumerate(target.classes):
                out[f"{target.column}_probability_{c}"] = proba[:, i]
        return out

    def report(self, path: str | os.PathLike, data: Source | None = None, compare: Model | str | os.PathLike | None = None,
               name: str | None = None, explain: list[int] | None = None) -> Path:
        """Write the HTML report (and its figures as PNG files beside it); returns its path.

        ``data``: evaluate on this labelled data instead of the stored test split; ``compare``: a
        second model (or its directory) shown side by side; ``explain``: rows of ``data`` to explain.
        """
        from loopml.evaluate.report import model_report

        self._require_trained()
        name = name or Path(path).resolve().parent.name
        evaluation = None
        if data is not None:
            evaluation = self.evaluation_of(data, "data" if isinstance(data, pd.DataFrame) else Path(str(data)).stem)
        other = None
        if isinstance(compare, Model):
            other = ("other model", compare)
        elif compare is not None:
            other = (Path(compare).name, load(compare))
        explanations = self.explain(data, explain) if explain and data is not None else None
        return model_report(self, name, evaluation, other, explanations=explanations).write(path)

    # -- persistence -------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, overwrite: bool = False, report: bool = False) -> Path:
        """Write the model directory; ``report=True`` puts report.html (and its figures) in it too.

        A tracked run's model is stored in the artifact root once complete, report included.
        """
        self._require_trained()
        config = self.config.model_copy(update={"features": self._resolved_features()})
        documents = {
            "config.yaml": yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False),
            "schema.json": json.dumps(self.schema.to_dict(), indent=2),
            "preprocessing.json": json.dumps(self.preprocessor.to_dict()),
            "metrics.json": json.dumps(self.metrics, indent=2),
            "history.json": json.dumps({"epochs": self.history, **self.info.get("training", {})}, indent=2),
            "evaluation.json": json.dumps({**self.evaluation, "data_report": self.info.get("data_report", {})}),
            "reference.json": json.dumps(self.reference),
        }
        manifest = {
            "target": self.schema.target, "task": self.schema.target_kind,
            "data_fingerprint": self.info.get("data_fingerprint"),
            "config_hash": _hash(documents["config.yaml"]),
            "data_source": self.info.get("data_source"),
            "splits": self.info.get("splits"),  # the rows of every split, for retraining and its gate
        }
        name = Path(path).expanduser().resolve().name

        def write_report(folder: Path) -> None:
            self.report(folder / "report.html", name=name)

        written = write_bundle(path, documents, self.network.state_dict(), manifest, overwrite,
                               extras=write_report if report else None)
        if self.run_id is not None:  # a tracked run: its model goes to the artifact root
            self._store.attach_model(self.run_id, written)
        return written

    def _resolved_features(self) -> dict:
        resolved = {col: f.config for col, f in self.preprocessor.features.items()}
        skipped = {c.name: self.config.features.get(c.name) for c in self.schema.columns if c.type == "skip"}
        return {**resolved, **{k: v for k, v in skipped.items() if v is not None}}


def build_network(pre: Preprocessor, config: Config, class_weights: list[float] | None = None) -> LoopModel:
    slots = [FeatureSlot(col, f.config.encoder, f.encoder_inputs()) for col, f in pre.features.items()]
    n_outputs = len(pre.target.classes) if pre.target.kind == "category" else 1
    return LoopModel(slots, config.combiner, pre.target.kind, n_outputs, class_weights)


def load(path: str | os.PathLike, store: str | None = None) -> Model:
    """Load a model directory, or a registered version: ``NAME@alias``, ``NAME:3``, ``NAME:latest``.

    Never unpickles: JSON, YAML and safetensors only.
    """
    from loopml.registry import REF, Store

    version = None
    if not Path(path).exists() and REF.match(str(path)):
        version = Store(store).resolve(str(path))
        path = version["path"]
    manifest, documents, weights = read_bundle(path)
    model = Model(yaml.safe_load(documents["config.yaml"]))
    model.schema = Schema.from_dict(json.loads(documents["schema.json"]))
    model.preprocessor = Preprocessor.from_dict(json.loads(documents["preprocessing.json"]))
    model.network = build_network(model.preprocessor, model.config)
    try:
        model.network.load_state_dict(weights)
    except RuntimeError:
        version = manifest.get("loopml_version")
        raise LoopmlError(f"the weights in {path} do not fit its config (saved by loopml {version}?)") from None
    model.network.eval()
    model.metrics = json.loads(documents["metrics.json"])
    history = json.loads(documents["history.json"])
    model.history = history.pop("epochs")
    model.info = {"manifest": manifest, "training": history, "data_fingerprint": manifest.get("data_fingerprint")}
    if version is not None:
        model.info["registry"] = {"name": version["name"], "version": version["version"], "run_id": version["run_id"]}
    model.reference = json.loads(documents.get("reference.json", "{}"))
    model.info["data_source"] = manifest.get("data_source")
    model.info["splits"] = manifest.get("splits")
    if "evaluation.json" in documents:
        model.evaluation = json.loads(documents["evaluation.json"])
        model.info["data_report"] = model.evaluation.pop("data_report", {})
    return model


def _split_record(prepared: Prepared, config: Config, pre: Preprocessor) -> dict:
    from loopml.data.split import SPLITS, split_record

    frames = {name: prepared.raw(name, config) for name in SPLITS}
    return split_record(prepared.sources, prepared.rows, frames, [*pre.features, pre.target.column])


def _write_json_atomic(path: Path, value: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value), encoding="utf-8")
    os.replace(tmp, path)


def _source_path(source: object) -> str | None:
    """The training file's absolute path (retraining reads it again); None for in-memory data."""
    return str(Path(source).resolve()) if isinstance(source, (str, os.PathLike)) else None


def _hash(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:16]
