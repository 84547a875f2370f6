"""Linear learners on the ``sparse`` view: logistic regression, a calibrated linear SVM, ridge regression.

Fitted with scikit-learn, kept as plain arrays: ``coef`` (outputs, columns) and ``intercept``
(outputs,) in float64 safetensors, the rest (model, calibration, sizes) in JSON. Scores are
``X @ coef.T + intercept`` in float64 (then ``a * s + b`` for the calibrated SVM), computed by the
same code after fit and after load, so a loaded learner scores bit-identically.

Scores are in ``Target.decode``'s space: binary = the positive class's logit, category = K logits,
number = the standardised target. The SVM's margins are turned into logits by a Platt scaling
(``sigmoid(a * s + b)``; for K classes a temperature ``softmax(a * s)``) fitted on the validation
split: two numbers, saved in the JSON.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from loopml.errors import LoopmlError
from loopml.learners.base import LEARNERS, Budget, Context, FitData, Learner, Task

#: default C per model when ``C`` is not set; ridge uses alpha = 1 / C. Measured (ag_news_test
#: 80/20, 10% of train for validation; sms_spam deduplicated): svm C=1 acc .8954 in ~5 s, spam F1
#: .9569; logistic C=10 .8895 in ~70 s, F1 .9398 (C=0.5/2/10 for svm and 30/100 for logistic: no better)
DEFAULT_C = {"logistic": 10.0, "svm": 1.0, "ridge": 1.0}
#: logit of a class absent from the training rows: never predicted
_ABSENT_LOGIT = -30.0
#: rough seconds per (stored value x output x iteration) of lbfgs, to fit max_iter into a budget
_SECONDS_PER_NNZ_ITER = 3e-8
_FILES = ("linear.safetensors", "linear.json")


def _matrix(x):
    """The CSR matrix of a SparseView (or a matrix given directly), float64."""
    import scipy.sparse as sp

    mat = getattr(x, "x", x)
    return sp.csr_matrix(mat, dtype=np.float64)


@LEARNERS.register("linear")
class LinearLearner(Learner):
    """Logistic regression or a calibrated linear SVM (classification), ridge regression (number)."""

    view = "sparse"
    accepts = frozenset({"text", "number", "binary", "category", "date"})

    class Params(Learner.Params):
        type: Literal["linear"] = "linear"
        #: classification model; a number target always uses ridge regression
        model: Literal["logistic", "svm"] = "svm"
        #: inverse regularisation strength (ridge: alpha = 1 / C); None = the model's default
        C: float | None = Field(None, gt=0)
        max_iter: int = Field(1000, ge=1)

    def _reset(self) -> None:
        super()._reset()
        self.coef: np.ndarray | None = None  # (outputs, columns) float64
        self.intercept: np.ndarray | None = None  # (outputs,) float64
        self.calibration: dict | None = None  # {"a": .., "b": ..} for the SVM

    # -- fitting --------------------------------------------------------------------------------------
    def _model_name(self) -> str:
        return "ridge" if self.task.kind == "number" else self.params.model

    def _sample_weight(self, split) -> np.ndarray | None:
        weight = None if split.weight is None else np.asarray(split.weight, dtype=np.float64)
        if self.task.class_weights and self.task.kind != "number":
            per_class = np.asarray(self.task.class_weights, dtype=np.float64)[np.asarray(split.y, dtype=np.int64)]
            weight = per_class if weight is None else weight * per_class
        return weight

    def _max_iter(self, x, budget: Budget) -> int:
        left = budget.remaining()
        if left is None:
            return self.params.max_iter
        per_iter = max(x.nnz, 1) * max(self.task.n_outputs, 1) * _SECONDS_PER_NNZ_ITER
        return int(min(self.params.max_iter, max(10, 0.8 * left / per_iter)))

    def fit(self, data: FitData, budget: Budget) -> LinearLearner:
        import warnings

        from sklearn.exceptions import ConvergenceWarning

        self._reset()
        started = time.monotonic()
        x, y = _matrix(data.train.x), np.asarray(data.train.y)
        if x.shape[0] == 0:
            raise LoopmlError("the training split is empty")
        model = self._model_name()
        C = float(self.params.C or DEFAULT_C[model])
        max_iter = self._max_iter(x, budget)
        weight = self._sample_weight(data.train)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            if model == "ridge":
                est = self._fit_ridge(x, y.astype(np.float64), weight, C, max_iter)
            else:
                est = self._fit_classifier(model, x, y.astype(np.int64), weight, C, max_iter)
        converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
        n_iter = getattr(est, "n_iter_", None)
        if model == "svm":
            self.calibration = self._calibrate(data.validation)
        self.info = {
            "model": model, "C": C, "max_iter": max_iter, "converged": converged,
            "n_iter": None if n_iter is None else int(np.max(n_iter)),
            "columns": int(x.shape[1]), "seconds": round(time.monotonic() - started, 3),
        }
        if self.calibration is not None:
            self.info["calibration"] = dict(self.calibration)
        return self

    def _fit_ridge(self, x, y, weight, C, max_iter):
        from sklearn.linear_model import Ridge

        est = Ridge(alpha=1.0 / C, max_iter=max_iter, random_state=self.task.seed).fit(x, y, sample_weight=weight)
        self.coef = np.asarray(est.coef_, dtype=np.float64).reshape(1, -1)
        self.intercept = np.asarray(est.intercept_, dtype=np.float64).reshape(1)
        return est

    def _fit_classifier(self, model, x, y, weight, C, max_iter):
        from sklearn.linear_model import LogisticRegression
        from sklearn.svm import LinearSVC

        present = np.unique(y)
        if len(present) < 2:
            raise LoopmlError(f"the training split holds only one class ({present.tolist()}); a classifier needs two")
        if model == "logistic":
            est = LogisticRegression(C=C, max_iter=max_iter, random_state=self.task.seed)
        else:
            est = LinearSVC(C=C, max_iter=max_iter, random_state=self.task.seed)
        est.fit(x, y, sample_weight=weight)
        coef, intercept = np.asarray(est.coef_, dtype=np.float64), np.asarray(est.intercept_, dtype=np.float64)
        if self.task.kind == "binary":
            self.coef, self.intercept = coef.reshape(1, -1), intercept.reshape(1)
            return est
        k = self.task.n_classes
        self.coef = np.zeros((k, x.shape[1]))
        self.intercept = np.full(k, _ABSENT_LOGIT)
        if len(present) == 2:  # a 2-class fit of a K-class target: one row, the second class's margin
            self.coef[present[1]], self.intercept[present[1]] = coef[0], intercept[0]
            self.intercept[present[0]] = 0.0
        else:
            self.coef[present], self.intercept[present] = coef, intercept
        return est

    def _calibrate(self, validation) -> dict:
        """Platt scaling of the SVM margins on the validation split (a=1, b=0 when it is empty)."""
        from scipy.optimize import minimize
        from scipy.special import log_expit, log_softmax

        if validation is None or len(validation) == 0:
            return {"a": 1.0, "b": 0.0}
        margins = self._raw_scores(validation.x)
        y = np.asarray(validation.y, dtype=np.int64)
        weight = self._sample_weight(validation)
        w = np.ones(len(y)) if weight is None else weight
        if self.task.kind == "binary":
            s = margins[:, 0]

            def loss(p):
                z = p[0] * s + p[1]
                return -np.sum(w * (y * log_expit(z) + (1 - y) * log_expit(-z))) / w.sum()

            start = [1.0, 0.0]
        else:
            def loss(p):
                return -np.sum(w * log_softmax(p[0] * margins, axis=1)[np.arange(len(y)), y]) / w.sum()

            start = [1.0]
        best = minimize(loss, start, method="L-BFGS-B", bounds=[(1e-3, 1e3)] + [(-50.0, 50.0)] * (len(start) - 1))
        a = float(best.x[0])
        b = float(best.x[1]) if len(start) > 1 else 0.0
        return {"a": a, "b": b}

    # -- scoring --------------------------------------------------------------------------------------
    def _raw_scores(self, x) -> np.ndarray:
        if self.coef is None:
            raise LoopmlError("the linear learner is not fitted")
        mat = _matrix(x)
        if mat.shape[1] != self.coef.shape[1]:
            raise LoopmlError(f"the sparse view has {mat.shape[1]} columns, the linear model {self.coef.shape[1]}")
        return np.asarray(mat @ self.coef.T) + self.intercept

    def predict_scores(self, x) -> np.ndarray:
        scores = self._raw_scores(x)
        if self.calibration is not None:
            scores = self.calibration["a"] * scores + self.calibration["b"]
        return scores[:, 0] if self.task.kind != "category" else scores

    def contributions(self, x) -> np.ndarray:
        """coef * x per view column plus the bias, for the predicted class (category); rows sum to the score."""
        mat = _matrix(x)
        scores = self.predict_scores(mat)
        rows = np.argmax(scores, axis=1) if self.task.kind == "category" else np.zeros(mat.shape[0], dtype=np.int64)
        a = self.calibration["a"] if self.calibration else 1.0
        b = self.calibration["b"] if self.calibration else 0.0
        out = np.zeros((mat.shape[0], mat.shape[1] + 1))
        for i in range(mat.shape[0]):
            lo, hi = mat.indptr[i], mat.indptr[i + 1]
            cols = mat.indices[lo:hi]
            out[i, cols] = a * self.coef[rows[i], cols] * mat.data[lo:hi]
            out[i, -1] = a * self.intercept[rows[i]] + b
        return out

    # -- saving ---------------------------------------------------------------------------------------
    def save(self, folder: Path) -> None:
        from safetensors.numpy import save_file

        if self.coef is None:
            raise LoopmlError("the linear learner is not fitted")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({"coef": np.ascontiguousarray(self.coef), "intercept": np.ascontiguousarray(self.intercept)},
                  str(folder / _FILES[0]))
        meta = {"format": 1, "kind": self.task.kind, "outputs": int(self.coef.shape[0]),
                "columns": int(self.coef.shape[1]), "calibration": self.calibration, "info": self.info}
        (folder / _FILES[1]).write_text(json.dumps(meta, indent=1))

    @classmethod
    def load(cls, folder: Path, params, task: Task, context: Context | None = None) -> LinearLearner:
        from safetensors.numpy import load_file

        folder = Path(folder)
        for name in _FILES:
            if not (folder / name).is_file():
                raise LoopmlError(f"linear model file missing: {folder / name}")
        meta = json.loads((folder / _FILES[1]).read_text())
        tensors = load_file(str(folder / _FILES[0]))
        learner = cls(params, task, context)
        learner.coef = np.asarray(tensors["coef"], dtype=np.float64)
        learner.intercept = np.asarray(tensors["intercept"], dtype=np.float64)
        if learner.coef.shape != (meta["outputs"], meta["columns"]) or learner.intercept.shape != (meta["outputs"],):
            raise LoopmlError(f"linear model files in {folder} disagree on their shapes")
        learner.calibration = meta.get("calibration")
        learner.info = meta.get("info", {})
        return learner
