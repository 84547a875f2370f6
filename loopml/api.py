"""The Python API: ``Model(...).fit(df)``, ``.evaluate``, ``.predict``, ``.predict_proba``, ``.save``, ``load``.

``Model`` is the thin facade. The training run is train/run.py (``train`` -> ``TrainResult``), the
evaluation assembly evaluate/assemble.py, the model directory bundle.py; the fitted model itself
is ``Model.learner``, whichever learner the config names (the network by default).
"""

from __future__ import annotations

import copy
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from loopml.bundle import load_model, save_model
from loopml.config import Config, load_config
from loopml.data.read import Source, read_table
from loopml.errors import LoopmlError
from loopml.features.pipeline import Preprocessor
from loopml.learners import Budget, Learner
from loopml.learners.network import build_network  # noqa: F401  (re-exported: tests and benches build networks)
from loopml.prepare import Prepared, prepare
from loopml.schema import Schema
from loopml.train import default_callbacks
from loopml.train.run import (
    CLASSIFICATION_MONITORS,  # noqa: F401  (re-exported)
    REGRESSION_MONITORS,  # noqa: F401  (re-exported)
    RunOptions,
    TrainResult,
    adopt_warm_start,
    check_learner,
    check_monitor,
    learner_input,
    train,
)

#: in a checkpoint folder: the tracked run it belongs to, so --resume continues that run
RUN_FILE = "run.json"


class Model:
    """A loopml model. ``Model(target="income")`` or ``Model("config.yaml")`` or ``Model({...})``."""

    def __init__(self, config: str | os.PathLike | dict | Config | None = None, *, target: str | None = None,
                 time_budget: float | None = None, preset: str | None = None, **sections: Any) -> None:
        if time_budget is not None or preset is not None:  # AutoML: as ``loopml train --time-budget S --preset P``
            from loopml.learners.automl import automl_sections

            sections = {**sections, **automl_sections(time_budget, preset)}
        if isinstance(config, Config):
            self.config = config
        else:
            self.config = load_config(config, target=target, **sections)
        #: values read as missing by the last predict/evaluate call with ``coerce=True``, per column
        self.last_coerced: dict[str, int] = {}
        # the config as given and as the recipe resolved it: a second fit chooses again from the given one
        self._given_config: Config | None = None
        self._resolved_config: Config | None = None
        self._reset()

    def _reset(self) -> None:
        """Forget everything an earlier fit (or warm start) left, as scikit-learn's estimators do."""
        self.preprocessor: Preprocessor | None = None
        #: the fitted learner (``learner.predict_scores`` on its view of the rows)
        self.learner: Learner | None = None
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
        self._initial_weights: dict | None = None
        #: what the recipe chose for the last fit (train/recipes.py); None when nothing applied
        self._recipe = None

    @property
    def network(self):
        """The fitted ``nn.Module`` of a network learner; None for any other learner (or before fitting)."""
        return getattr(self.learner, "network", None) if getattr(self.learner, "view", None) == "tensors" else None

    # -- training --------------------------------------------------------------------------------
    def fit(
        self, data: Source, *, validation: Source | None = None, test: Source | None = None,
        checkpoint_dir: str | os.PathLike | None = None, resume: bool = False, progress: bool | None = None,
        cache_dir: str | os.PathLike | None | bool = None, track: bool | str = False, store: object | None = None,
        warm_start: Model | None = None,
    ) -> Model:
        """Train. ``track=True`` (or an experiment name) records the run in the registry store:
        params, per-epoch metrics, final metrics, status; ``save()`` then attaches the model.
        ``warm_start``: keep that (network) model's preprocessing and start from its weights (fine-tuning).

        Problems with the input (files, columns, config) surface before a run is recorded.
        With ``resume`` a tracked run continues the run recorded in ``checkpoint_dir``.
        Like scikit-learn's ``fit``, every call starts from a clean slate: nothing fitted before is kept.
        """
        if warm_start is self:  # its fitted parts must outlive the reset below
            warm_start = copy.copy(self)
        self._reset()
        budget = Budget(self.config.automl.time_budget)  # preparation counts against it too
        self._choose_defaults(data, validation, test, progress is not False, warm_start is not None)
        prepared = self._prepare(data, validation, test, cache_dir)
        if warm_start is not None:  # its preprocessing re-encodes every split, so its weights fit
            warm_start._require_trained()
            self._initial_weights = adopt_warm_start(self.config, prepared, warm_start)
            self.preprocessor = prepared.preprocessor
        options = RunOptions(checkpoint_dir, resume, progress is not False, [], self._initial_weights,
                             default_callbacks, budget)
        if not track:
            return self._apply(train(self.config, prepared, options))
        from loopml.registry import Store
        from loopml.registry.tracking import RunLogger

        self._store = store if isinstance(store, Store) else Store(store)
        experiment = track if isinstance(track, str) else self.config.target.column
        self.run_id = self._continued_run(checkpoint_dir, resume) or self._store.start_run(
            experiment, self.config.model_dump(mode="json"))
        if checkpoint_dir:
            _write_json_atomic(Path(checkpoint_dir) / RUN_FILE, {"run_id": self.run_id, "store": self._store.url})
        options.callbacks.append(RunLogger(self._store, self.run_id))
        try:
            self._apply(train(self.config, prepared, options))
        except KeyboardInterrupt:
            self._store.end_run(self.run_id, "killed", error="interrupted")
            raise
        except BaseException as e:
            self._store.end_run(self.run_id, "failed", error=f"{type(e).__name__}: {e}"[:2000])
            raise
        self._store.end_run(self.run_id, "finished", self.metrics_summary(), data_fingerprint=self.info["data_fingerprint"])
        return self

    def _choose_defaults(self, data: Source, validation: Source | None, test: Source | None, show: bool,
                         warm: bool) -> None:
        """The settings the config leaves unset, chosen from the data (train/recipes.py: images and audio; the
        CLI, the API and retraining all come here), printed with the progress output."""
        from loopml.train.recipes import apply_recipe

        if self._resolved_config is None or self.config is not self._resolved_config:
            self._given_config = self.config  # a config set since the last fit replaces the given one
        self.config, self._recipe = apply_recipe(self._given_config, data, validation, test, warm_start=warm)
        self._resolved_config = self.config
        if self._recipe is not None and show:
            print(self._recipe.describe(), file=sys.stderr, flush=True)

    def _apply(self, result: TrainResult) -> Model:
        self.learner, self.metrics, self.evaluation = result.learner, result.metrics, result.evaluation
        self.reference, self.history, self.info = result.reference, result.history, result.info
        if self._recipe is not None:  # saved in history.json beside the epochs
            self.info.setdefault("training", {})["recipe"] = self._recipe.record()
        if result.preprocessor is not None:  # saved with the weights, so it must be the one they were fitted on
            self.preprocessor = result.preprocessor
        return self

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
        """The scalar metrics per split (what the registry keeps); with target.synthesize, train.synthesized_rows."""
        out = {split: {k: v for k, v in m.items() if isinstance(v, (int, float))} for split, m in self.metrics.items()}
        synthesized = (self.info or {}).get("training", {}).get("synthesized")
        if synthesized is not None:
            out["train"] = {"synthesized_rows": synthesized["rows"]}
        return out

    def _prepare(self, data, validation, test, cache_dir) -> Prepared:
        prepared = prepare(self.config, data, validation, test,
                           cache_dir=False if cache_dir is False else (Path(cache_dir) if cache_dir else None))
        self.schema, self.preprocessor = prepared.schema, prepared.preprocessor
        target_cfg = self.config.target
        if target_cfg.sampling != "none" and self.schema.target_kind == "number":
            raise LoopmlError("target.sampling is for classification; this target is a number")
        if self.config.training.label_smoothing and self.schema.target_kind == "number":
            from loopml.config import LABEL_SMOOTHING_NUMBER

            raise LoopmlError(LABEL_SMOOTHING_NUMBER)
        if target_cfg.synthesize is not None:
            from loopml.train.synthesize import check as check_synthesis

            check_synthesis(self.config, {c: f.config.type for c, f in self.preprocessor.features.items()},
                            self.schema.target_kind)
        if target_cfg.threshold != 0.5 and self.schema.target_kind != "binary":
            raise LoopmlError(f"target.threshold is for binary targets; this target is {self.schema.target_kind}")
        if self.config.training.mixup is not None:  # before a run is recorded (the trainer checks its network too)
            from loopml.train.mixing import check as check_mixup

            check_mixup({c: f.config.type for c, f in self.preprocessor.features.items()}, self.schema.target_kind)
        check_monitor(self.config, self.schema.target_kind)
        check_learner(self.config, self.preprocessor)
        training = self.config.training
        if training.device not in ("auto", "cpu") or training.precision != "fp32":
            # before any run is recorded or any epoch starts (torch is imported only for these settings)
            from loopml.train.device import check_precision, resolve_device

            check_precision(training.precision, resolve_device(training.device))
        return prepared

    # -- using a trained model ---------------------------------------------------------------------
    def _require_trained(self) -> None:
        if self.learner is None:
            raise LoopmlError("the model is not trained yet: call fit() or loopml.load()")

    def _read_inputs(self, data: Source, coerce: bool) -> pd.DataFrame:
        """The table, with values the model cannot read refused (or, with ``coerce``, read as missing)."""
        from loopml.data.validate import check_inputs

        self._require_trained()
        df, self.last_coerced = check_inputs(read_table(data, self.config.data), self.preprocessor.features, coerce)
        return df

    def inputs(self, frame: pd.DataFrame) -> Any:
        """What the learner reads for checked rows: its view of them (a dict of views for an ensemble)."""
        self._require_trained()
        return learner_input(self.preprocessor, type(self.learner), self.learner.params, frame)

    def scores(self, data: Source, coerce: bool = False) -> np.ndarray:
        """The learner's raw scores for ``data`` (logits / standardised numbers: what ``Target.decode`` reads)."""
        return self._scores(self._read_inputs(data, coerce))

    def _scores(self, df: pd.DataFrame) -> np.ndarray:
        return np.asarray(self.learner.predict_scores(self.inputs(df)))

    def evaluate(self, data: Source, coerce: bool = False) -> dict:
        """Metrics on labelled data (rows without a label are ignored). A value an input column
        cannot hold (``old`` in a number column) is an error, or with ``coerce=True`` a missing
        value, counted per column in ``last_coerced``."""
        from loopml.evaluate.assemble import scores_metrics

        df, target = self._labelled(data, coerce)
        return scores_metrics(self.preprocessor, self._scores(df), target)

    def evaluation_of(self, data: Source, name: str = "data", coerce: bool = False) -> dict:
        """Metrics plus what the report draws (scores, worst errors) for labelled data."""
        from loopml.evaluate.analysis import evaluate_split
        from loopml.evaluate.assemble import tensor_inputs

        df, target = self._labelled(data, coerce)
        x = self.inputs(df)
        scores = np.asarray(self.learner.predict_scores(x))
        return evaluate_split(self.preprocessor, name, scores, target, tensor_inputs(x, self.learner.view), df)

    def _labelled(self, data: Source, coerce: bool = False) -> tuple[pd.DataFrame, np.ndarray]:
        df = self._read_inputs(data, coerce)
        target = self.preprocessor.target.column
        if target not in df.columns:
            raise LoopmlError(f"data has no target column '{target}' to evaluate against")
        df = df[df[target].notna()]
        if not len(df):
            raise LoopmlError(f"data has no rows with a '{target}' label to evaluate against")
        return df, self.preprocessor.transform_target(df).numpy()

    def feature_importance(self, data: Source | None = None, repeats: int = 5, seed: int = 0) -> dict:
        """Permutation importance on labelled ``data`` (default: the validation split, from training)."""
        from loopml.evaluate.assemble import importance
        from loopml.evaluate.explain import importance_metric

        if data is None:
            if "importance" not in self.evaluation:
                raise LoopmlError("no stored importance: pass labelled data")
            return self.evaluation["importance"]
        df, target = self._labelled(data)
        metric = importance_metric(self.schema.target_kind, self.config.training.early_stopping.metric)
        return importance(self.learner, self.preprocessor, self.inputs(df), target, metric, df, repeats, seed,
                          inputs_fn=self.inputs)

    def explain(self, data: Source, rows: list[int] | None = None, n_steps: int = 32) -> list[dict]:
        """Per-row attributions for some rows of ``data`` (default: the first 5): integrated gradients
        for a network, the learner's own contributions (TreeSHAP for trees) otherwise."""
        from loopml.evaluate.explain import explain_any

        df = self._read_inputs(data, coerce=False)  # the same values as predict reads, or an error
        rows = list(range(min(5, len(df)))) if rows is None else rows
        bad = [r for r in rows if not 0 <= r < len(df)]
        if bad:
            raise LoopmlError(f"row {bad[0]} is out of range: the data has {len(df)} rows (0..{len(df) - 1})")
        return explain_any(self, df.iloc[rows], n_steps)

    def predict(self, data: Source, coerce: bool = False) -> np.ndarray:
        """Labels (or numbers). A value an input column cannot hold (``old`` in a number column, a
        third value in a binary one, ``inf``) is a LoopmlError naming column, row and value; with
        ``coerce=True`` such values are read as missing and counted per column in ``last_coerced``."""
        scores = self.scores(data, coerce)
        return self.preprocessor.target.decode(scores)[0]

    def predict_proba(self, data: Source, coerce: bool = False) -> pd.DataFrame:
        scores = self.scores(data, coerce)
        target = self.preprocessor.target
        if target.kind == "number":
            raise LoopmlError("predict_proba is for classifiers; this model predicts a number")
        return pd.DataFrame(target.decode(scores)[1], columns=[str(c) for c in target.classes])

    def predictions(self, data: Source, coerce: bool = False) -> pd.DataFrame:
        """One row per input: the prediction and, for classifiers, a probability per class."""
        scores = self.scores(data, coerce)
        target = self.preprocessor.target
        labels, proba = target.decode(scores)
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
        name = Path(path).expanduser().resolve().name

        def write_report(folder: Path) -> None:
            self.report(folder / "report.html", name=name)

        written = save_model(self, path, overwrite, extras=write_report if report else None)
        if self.run_id is not None:  # a tracked run: its model goes to the artifact root
            self._store.attach_model(self.run_id, written)
        return written


def load(path: str | os.PathLike, store: str | None = None) -> Model:
    """Load a model directory, or a registered version: ``NAME@alias``, ``NAME:3``, ``NAME:latest``.

    Never unpickles: JSON, YAML, safetensors and the learners' own text/JSON formats only.
    """
    from loopml.registry import REF, Store

    version = None
    if not Path(path).exists() and REF.match(str(path)):
        version = Store(store).resolve(str(path))
        path = version["path"]
    model = load_model(path, Model)
    if version is not None:
        model.info["registry"] = {"name": version["name"], "version": version["version"], "run_id": version["run_id"]}
    return model


def _write_json_atomic(path: Path, value: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value), encoding="utf-8")
    os.replace(tmp, path)
