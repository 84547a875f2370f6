"""The report's figures: matplotlib (Agg, no display), each returned as PNG bytes.

Margins come from the labels' lengths (``_fit_margins``), not ``tight_layout``: that measures every
text by drawing the figure once more, which was half of a report's time. Log axes print plain
numbers (``1e-03``, ``LogFormatter``), not mathtext, whose parser was another fifth.
"""

from __future__ import annotations

import io
import re
import sys

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402  (not pyplot: no global figure registry to manage)
from matplotlib.ticker import LogFormatter, MaxNLocator  # noqa: E402
from sklearn import metrics as skm  # noqa: E402

from loopml.evaluate.metrics import calibration  # noqa: E402
from loopml.evaluate.threshold import threshold_curve  # noqa: E402

BLUE, ORANGE, GREY = "#1f77b4", "#ff7f0e", "#888888"


#: inches per character of a 10-pt label and the height of one line of it (DejaVu Sans, Agg)
_CHAR_IN, _LINE_IN = 0.078, 0.2
_MATHTEXT = re.compile(r"\\mathdefault|[${}^]")


def _png(fig: Figure, fit: bool = True) -> bytes:
    """The figure as PNG; a one-axes figure gets margins fitted to its labels, others ``tight_layout``."""
    if fit and len(fig.axes) == 1:
        _fit_margins(fig, fig.axes[0])
    elif fit:
        fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=96)
    if fig.canvas.manager is not None:  # a pyplot figure (loop/report.py makes some): pyplot keeps it until closed
        sys.modules["matplotlib.pyplot"].close(fig)
    return buffer.getvalue()


def _longest(labels) -> int:
    # mathtext tick labels ($\mathdefault{10^{-1}}$, symlog axes) print as their digits
    return max((len(_MATHTEXT.sub("", t.get_text())) for t in labels), default=0)


def _fit_margins(fig: Figure, ax: Axes, right: float = 0.0) -> None:
    import math

    width, height = fig.get_size_inches()
    xlabels = ax.get_xticklabels()
    rotation = math.radians(max((t.get_rotation() for t in xlabels), default=0.0))
    xtick_in = _LINE_IN + _longest(xlabels) * _CHAR_IN * math.sin(rotation)
    left = 0.15 + (_LINE_IN + 0.05 if ax.get_ylabel() else 0.0) + _longest(ax.get_yticklabels()) * _CHAR_IN
    bottom = 0.12 + xtick_in + (_LINE_IN + 0.05 if ax.get_xlabel() else 0.0)
    top = 0.12 + (1.2 * _LINE_IN + 0.05 if ax.get_title() else 0.0)
    right = 0.2 + right
    # never let margins swallow the plot (very long labels): keep at least half of each side
    left, right = (min(left, width * 0.5), min(right, width * 0.3))
    bottom, top = (min(bottom, height * 0.45), min(top, height * 0.25))
    fig.subplots_adjust(left=left / width, right=1 - right / width, bottom=bottom / height, top=1 - top / height)


def _figure(width: float = 5.0, height: float = 3.4) -> tuple[Figure, Axes]:
    fig = Figure(figsize=(width, height))
    ax = fig.subplots()
    ax.grid(alpha=0.3)
    return fig, ax


# -- data and training ------------------------------------------------------------------------
def class_balance(balance: dict[str, dict[str, int]]) -> bytes:
    splits = list(balance)
    classes = list(next(iter(balance.values())))
    fig, ax = _figure(max(5.0, 0.5 * len(classes) * len(splits)), 3.2)
    width = 0.8 / len(splits)
    for k, split in enumerate(splits):
        total = max(sum(balance[split].values()), 1)
        ax.bar(np.arange(len(classes)) + k * width, [balance[split][c] / total for c in classes], width, label=split)
    ax.set_xticks(np.arange(len(classes)) + 0.4 - width / 2, classes, rotation=30 if len(classes) > 6 else 0)
    ax.set_ylabel("share of rows")
    ax.set_title("Class balance per split")
    ax.legend()
    return _png(fig)


def learning_curve(epochs: list[dict], key: str, best_epoch: int | None, title: str) -> bytes | None:
    """``train_<key>`` and ``val_<key>`` per epoch (network: rows with a 0-based ``epoch``) or per boosting
    round (trees: rows with a 1-based ``iteration``); ``best_epoch`` is 0-based in both."""
    train = [e.get(f"train_{key}") for e in epochs]
    val = [e.get(f"val_{key}") for e in epochs]
    if not epochs or all(v is None for v in train + val):
        return None
    unit = "epoch" if "epoch" in epochs[0] else "iteration"
    fig, ax = _figure()
    x = [e["epoch"] + 1 if unit == "epoch" else e["iteration"] for e in epochs]
    marker = "o-" if len(epochs) <= 60 else "-"
    if any(v is not None for v in train):
        ax.plot(x, train, marker, color=BLUE, ms=3, label="train")
    if any(v is not None for v in val):
        ax.plot(x, val, marker, color=ORANGE, ms=3, label="validation")
    if best_epoch is not None:
        ax.axvline(best_epoch + 1, color=GREY, ls="--", label=f"best {unit} ({best_epoch + 1})")
    ax.set_xlabel(unit)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs and rounds are whole: no 1.5, 2.5 ticks
    ax.set_ylabel(key)
    ax.set_title(title)
    ax.legend()
    return _png(fig)


def overlaid_curves(series: dict[str, list[tuple[int, float]]], key: str, xlabel: str = "epoch") -> bytes:
    """One metric's curve for each of several runs on one axes (the dashboard's run comparison):
    ``series`` maps a legend label to its ``(x, value)`` points."""
    fig, ax = _figure()
    for label, points in series.items():
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, "o-" if len(points) <= 60 else "-", ms=3, label=label)
    ax.set_xlabel(xlabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(key)
    ax.set_title(key)
    if any(series.values()):
        ax.legend(fontsize=7)
    return _png(fig)


def per_epoch(epochs: list[dict], key: str, title: str, ylabel: str, log: bool = False) -> bytes:
    fig, ax = _figure(5.0, 2.8)
    ax.plot([e["epoch"] + 1 for e in epochs], [e[key] for e in epochs], "o-", color=BLUE, ms=3)
    if log:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(LogFormatter())  # plain text; labels minor ticks on short ranges
        ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False))
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return _png(fig)


# -- monitoring -------------------------------------------------------------------------------
def psi_history(windows: list[str], series: dict[str, list[float | None]], threshold: float) -> bytes:
    """PSI per column over monitoring windows (oldest first; None: not measured in that window), on a
    symlog axis with the drift threshold dashed. The dashboard's monitor page draws it."""
    fig, ax = _figure(7.0, 3.2)
    x = list(range(1, len(windows) + 1))
    for name, values in series.items():
        ax.plot(x, [np.nan if v is None else v for v in values], "o-", ms=3, label=name)
    ax.axhline(threshold, color=GREY, ls="--", label=f"drift {threshold}")
    ax.set_yscale("symlog", linthresh=0.1)
    ax.yaxis.set_major_formatter(LogFormatter())
    ax.set_xticks(x, windows, rotation=45 if len(windows) > 8 else 0)
    ax.set_xlabel("window")
    ax.set_ylabel("PSI")
    ax.legend(fontsize=7)
    return _png(fig)


# -- classification ---------------------------------------------------------------------------
def confusion(matrix: list[list[int]], labels: list[str], normalized: bool) -> bytes:
    m = np.array(matrix, dtype=np.float64)
    if normalized:
        m = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    size = max(3.6, 0.55 * len(labels) + 1.8)
    fig = Figure(figsize=(size + 0.8, size))
    ax = fig.subplots()
    image = ax.imshow(m, cmap="Blues", vmin=0, vmax=1 if normalized else None)
    ticks = np.arange(len(labels))
    ax.set_xticks(ticks, labels, rotation=45 if len(labels) > 4 else 0, ha="right" if len(labels) > 4 else "center")
    ax.set_yticks(ticks, labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title("Confusion matrix (row-normalised)" if normalized else "Confusion matrix (counts)")
    if len(labels) <= 15:
        for i in range(len(labels)):
            for j in range(len(labels)):
                text = f"{m[i, j]:.2f}" if normalized else f"{int(m[i, j])}"
                ax.text(j, i, text, ha="center", va="center", fontsize=8,
                        color="white" if m[i, j] > (0.5 if normalized else m.max() / 2) else "black")
    colorbar_in = 0.9  # the colour bar and its tick labels, right of the matrix
    _fit_margins(fig, ax, colorbar_in)
    ax.apply_aspect()  # the square matrix's own box, inside the margins
    box = ax.get_position()
    fig.colorbar(image, cax=fig.add_axes((box.x1 + 0.15 / (size + 0.8), box.y0, 0.18 / (size + 0.8), box.height)))
    return _png(fig, fit=False)


def _one_vs_rest(y_true: np.ndarray, proba: np.ndarray, classes: list[str]):
    """(class name, binary truth, score) per curve: the positive class only for binary tasks."""
    if len(classes) == 2:
        return [(classes[1], y_true == 1, proba[:, 1])]
    return [(c, y_true == i, proba[:, i]) for i, c in enumerate(classes) if 0 < (y_true == i).sum() < len(y_true)]


def roc(y_true: np.ndarray, proba: np.ndarray, classes: list[str]) -> bytes:
    fig, ax = _figure(5.0, 4.0)
    for name, truth, s in _one_vs_rest(y_true, proba, classes):
        fpr, tpr, _ = skm.roc_curve(truth, s)
        ax.plot(fpr, tpr, label=f"{name} (AUC {skm.auc(fpr, tpr):.3f})")
    ax.plot([0, 1], [0, 1], color=GREY, ls="--")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("ROC")
    ax.legend(fontsize=7)
    return _png(fig)


def precision_recall(y_true: np.ndarray, proba: np.ndarray, classes: list[str]) -> bytes:
    fig, ax = _figure(5.0, 4.0)
    for name, truth, s in _one_vs_rest(y_true, proba, classes):
        precision, recall, _ = skm.precision_recall_curve(truth, s)
        ax.plot(recall, precision, label=f"{name} (AP {skm.average_precision_score(truth, s):.3f})")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title("Precision-recall")
    ax.legend(fontsize=7)
    return _png(fig)


def reliability(y_true: np.ndarray, proba: np.ndarray) -> bytes:
    table = calibration(y_true, proba)
    fig, ax = _figure(5.0, 4.0)
    conf = [b["confidence"] for b in table["bins"]]
    acc = [b["accuracy"] for b in table["bins"]]
    ax.plot([0, 1], [0, 1], color=GREY, ls="--", label="perfect calibration")
    ax.plot(conf, acc, "o-", color=BLUE, label="model")
    ax.set_xlabel("confidence (top class probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Reliability diagram (ECE {table['ece']:.3f})")
    ax.legend(fontsize=7)
    return _png(fig)


def threshold_f1(y_true: np.ndarray, p1: np.ndarray, chosen: float | None) -> bytes:
    fig, ax = _figure()
    for metric, color in (("f1", BLUE), ("precision", ORANGE), ("recall", "#2ca02c")):
        t, values = threshold_curve(y_true, p1, metric)
        ax.plot(t, values, color=color, label=metric)
    ax.axvline(chosen if chosen is not None else 0.5, color=GREY, ls="--",
               label=f"threshold used ({chosen if chosen is not None else 0.5:.2f})")
    ax.set_xlabel("threshold on p(positive)")
    ax.set_title("Threshold vs F1 (positive class)")
    ax.legend(fontsize=7)
    return _png(fig)


# -- regression -------------------------------------------------------------------------------
def predicted_vs_actual(y_true: np.ndarray, y_pred: np.ndarray) -> bytes:
    fig, ax = _figure(4.5, 4.0)
    ax.scatter(y_true, y_pred, s=4, alpha=0.4, color=BLUE)
    low, high = float(min(y_true.min(), y_pred.min())), float(max(y_true.max(), y_pred.max()))
    ax.plot([low, high], [low, high], color=GREY, ls="--")
    ax.set_xlabel("actual")
    ax.set_ylabel("predicted")
    ax.set_title("Predicted vs actual")
    return _png(fig)


def residuals(y_true: np.ndarray, y_pred: np.ndarray) -> bytes:
    fig, ax = _figure()
    ax.hist(y_pred - y_true, bins=50, color=BLUE)
    ax.axvline(0, color=GREY, ls="--")
    ax.set_xlabel("predicted − actual")
    ax.set_ylabel("rows")
    ax.set_title("Residuals")
    return _png(fig)


def error_by_decile(y_true: np.ndarray, y_pred: np.ndarray) -> bytes:
    deciles = np.quantile(y_true, np.linspace(0, 1, 11))
    which = np.clip(np.searchsorted(deciles, y_true, side="right") - 1, 0, 9)
    mae = [float(np.abs(y_pred - y_true)[which == d].mean()) if (which == d).any() else 0.0 for d in range(10)]
    fig, ax = _figure()
    ax.bar(np.arange(1, 11), mae, color=BLUE)
    ax.set_xticks(np.arange(1, 11))
    ax.set_xlabel("decile of the actual value")
    ax.set_ylabel("mean absolute error")
    ax.set_title("Error by target decile")
    return _png(fig)


# -- explanations -----------------------------------------------------------------------------
def importance(result: dict, top: int = 20) -> bytes:
    features = result["features"][:top][::-1]
    fig, ax = _figure(6.0, max(2.5, 0.3 * len(features) + 1.0))
    ax.barh([f["feature"] for f in features], [f["mean"] for f in features], xerr=[f["std"] for f in features],
            color=BLUE, capsize=2)
    ax.set_xlabel(f"drop in {result['metric']} when shuffled (mean ± std, {result['repeats']} repeats)")
    ax.set_title("Permutation feature importance")
    return _png(fig)


def attributions(features: dict[str, float], title: str) -> bytes:
    items = sorted(features.items(), key=lambda kv: abs(kv[1]))[-15:]
    fig, ax = _figure(5.5, max(2.2, 0.28 * len(items) + 1.0))
    ax.barh([k for k, _ in items], [v for _, v in items], color=[ORANGE if v > 0 else BLUE for _, v in items])
    ax.axvline(0, color=GREY)
    ax.set_xlabel("integrated-gradients attribution (towards the predicted output)")
    ax.set_title(title)
    return _png(fig)


def saliency(image_png: bytes, saliency_map: np.ndarray) -> bytes:
    from PIL import Image

    picture = np.asarray(Image.open(io.BytesIO(image_png)).convert("RGB"))
    fig = Figure(figsize=(4.4, 2.3))
    axes = fig.subplots(1, 2)
    axes[0].imshow(picture)
    axes[0].set_title("input", fontsize=8)
    axes[1].imshow(saliency_map, cmap="inferno")
    axes[1].set_title("saliency |IG|", fontsize=8)
    for ax in axes:
        ax.axis("off")
    return _png(fig)
