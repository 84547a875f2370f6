"""One self-contained HTML report per model: inline CSS, figures embedded as PNG, no network.

The same figures are also written as PNG files in ``figures/`` next to the HTML.
"""

from __future__ import annotations

import base64
import html
import os
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from loopml.evaluate import plots
from loopml.files import replace_folder

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1180px;padding:24px;color:#222}
h1{margin-bottom:4px} h2{border-bottom:2px solid #1f77b4;padding-bottom:4px;margin-top:36px}
table{border-collapse:collapse;margin:8px 0 16px;font-size:14px;display:block;overflow-x:auto;max-width:100%}
td,th{border:1px solid #ddd;padding:4px 8px;text-align:right}
th{background:#f3f6fa} td.l,th.l{text-align:left} .muted{color:#777;font-size:13px}
.grid{display:flex;flex-wrap:wrap;gap:12px} figure{margin:0} figure img{max-width:100%;border:1px solid #eee}
.pos{color:#1a7f37} .neg{color:#c62828} .tok{padding:1px 2px;border-radius:3px;line-height:1.9}
.snippet{max-width:460px;text-align:left;font-size:12px;white-space:pre-wrap}
"""
KEY_METRICS = ("accuracy", "balanced_accuracy", "f1", "f1_macro", "roc_auc", "average_precision", "log_loss",
               "expected_calibration_error", "threshold", "r2", "mae", "rmse")


@dataclass
class Report:
    title: str
    sections: list[str] = field(default_factory=list)
    figures: dict[str, bytes] = field(default_factory=dict)

    def figure(self, name: str, png: bytes | None, caption: str = "") -> str:
        if png is None:
            return ""
        self.figures[name] = png
        data = base64.b64encode(png).decode()
        return (f'<figure data-figure="{name}"><img alt="{html.escape(caption or name)}" '
                f'src="data:image/png;base64,{data}"></figure>')

    def add(self, section_id: str, heading: str, body: str) -> None:
        self.sections.append(f'<section id="{section_id}"><h2>{html.escape(heading)}</h2>{body}</section>')

    def html(self) -> str:
        stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(self.title)}</title>'
                f"<style>{STYLE}</style></head><body><h1>{html.escape(self.title)}</h1>"
                f'<p class="muted">loopml report, generated {stamp}</p>{"".join(self.sections)}</body></html>')

    def write(self, path: str | os.PathLike) -> Path:
        """``path`` (the HTML) and ``<path stem>-figures/`` or ``figures/`` beside it, each replaced atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        folder = path.with_name("figures" if path.name == "report.html" else f"{path.stem}-figures")
        tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for name, png in self.figures.items():
            (tmp / f"{name}.png").write_bytes(png)
        replace_folder(tmp, folder)
        tmp_html = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp_html.write_text(self.html(), encoding="utf-8")
        os.replace(tmp_html, path)
        return path


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return html.escape(str(value))


def table(header: list[str], rows: list[list], left: int = 1) -> str:
    th = "".join(f'<th class="{"l" if i < left else ""}">{html.escape(h)}</th>' for i, h in enumerate(header))
    body = "".join(
        "<tr>" + "".join(f'<td class="{"l" if i < left else ""}">{cell if isinstance(cell, Markup) else _fmt(cell)}</td>'
                         for i, cell in enumerate(row)) + "</tr>"
        for row in rows
    )
    return f"<table><tr>{th}</tr>{body}</table>"


class Markup(str):
    """HTML that ``table`` inserts as is."""


def metrics_table(metrics: dict[str, dict]) -> str:
    metrics = {name: m for name, m in metrics.items() if name != "privacy"}  # DP's spend: its own section
    shown = [k for k in KEY_METRICS if any(k in m for m in metrics.values())]
    return table(["split", *shown], [[name, *[m.get(k, "") for k in shown]] for name, m in metrics.items()])


# -- sections ---------------------------------------------------------------------------------
def model_report(model, name: str, evaluation: dict | None = None, compare: tuple[str, object] | None = None,
                 cv: dict | None = None, explanations: list[dict] | None = None) -> Report:
    """Everything about a trained (or loaded) ``loopml.Model``; ``evaluation`` replaces the test split's."""
    report = Report(f"{name}: predicting '{model.schema.target}' ({model.schema.target_kind})")
    stored = model.evaluation.get("evaluations", {})
    evaluation = evaluation or stored.get("test") or stored.get("validation")
    metrics = dict(model.metrics)
    if evaluation is not None and evaluation["name"] not in metrics:
        metrics[evaluation["name"]] = evaluation["metrics"]
    report.add("summary", "Summary", metrics_table(metrics) + _about(model))
    _data_section(report, model)
    _learner_section(report, model)
    _training_section(report, model)
    _privacy_section(report, model)
    _leaderboard_section(report, model)
    if isinstance(model.evaluation.get("compression"), dict):
        _compression_section(report, model.evaluation["compression"])
    if evaluation is not None:
        _evaluation_section(report, evaluation)
        _worst_section(report, evaluation)
    if model.evaluation.get("importance"):
        importance_section(report, model.evaluation["importance"], "validation")
    if explanations:
        explanation_section(report, explanations)
    if cv:
        cv_section(report, cv)
    if compare:
        _compare_section(report, name, model, *compare)
    return report


def _about(model) -> str:
    manifest = model.info.get("manifest", {})
    t = model.info.get("training", {})
    facts = [("learner", learner_of(model)[0]),
             ("loopml", manifest.get("loopml_version", "")), ("created", manifest.get("created", "")),
             ("data fingerprint", model.info.get("data_fingerprint", "")),
             ("epochs run", t.get("epochs_run", "")), ("stopped", t.get("stop_reason", ""))]
    return table(["", ""], [[k, v] for k, v in facts if v != ""])


def _data_section(report: Report, model) -> None:
    data = model.evaluation.get("data", {})
    body = ""
    if data.get("sizes"):
        sizes = data["sizes"]
        body += table(["split", "rows"], [[k, v] for k, v in sizes.items()])
        if data.get("train_rows_after_sampling", sizes.get("train")) != sizes.get("train"):
            body += f'<p class="muted">training rows after resampling: {data["train_rows_after_sampling"]}</p>'
    if data.get("class_balance"):
        body += report.figure("class_balance", plots.class_balance(data["class_balance"]), "class balance")
    rows = [[c.name, c.type, c.reason, c.stats.get("missing_pct", ""), c.stats.get("unique", ""),
             ", ".join(map(str, c.stats.get("samples", [])))[:80]] for c in model.schema.columns]
    body += "<h3>Inferred schema</h3>" + table(["column", "type", "why", "missing %", "unique", "examples"], rows, left=6)
    report.add("data", "Data", body)


def learner_of(model) -> tuple[str, dict]:
    """The learner's registered name and its parameters (the config's ``learner:`` section)."""
    learner = getattr(model, "learner", None)
    section = getattr(model.config, "learner", None)
    params = section.model_dump(mode="json") if section is not None else {}
    name = getattr(learner, "registered_name", None) or params.get("type") or "network"
    return str(name), {k: v for k, v in params.items() if k != "type"}


def _compact(value: object, limit: int = 160) -> str:
    import json

    text = value if isinstance(value, str) else json.dumps(value, default=str, separators=(", ", ": "))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _learner_section(report: Report, model) -> None:
    name, params = learner_of(model)
    learner = getattr(model, "learner", None)
    info = dict(getattr(learner, "info", None) or {})
    view = getattr(learner, "view", None)
    body = f"<p>Learner <b>{html.escape(name)}</b>" + (f", reading the {html.escape(str(view))} view" if view else "") + ".</p>"
    if params:
        body += "<h3>Parameters</h3>" + table(["parameter", "value"], [[k, _compact(v)] for k, v in params.items()], left=2)
    members = info.pop("members", None)
    facts = [[k, v if isinstance(v, (int, float)) else _compact(v)] for k, v in info.items()
             if k != "leaderboard" and v is not None and not isinstance(v, (list, dict))]
    if facts:
        body += "<h3>Fit</h3>" + table(["", ""], facts)
    if isinstance(members, list) and members and all(isinstance(m, dict) for m in members):
        body += "<h3>Members</h3>" + _dict_table(members)
    curve = _learner_curve(report, model, learner)
    report.add("learner", "Learner", body + curve)


def _learner_curve(report: Report, model, learner) -> str:
    """Per-iteration curves of a learner other than the network (trees' train/validation loss per round)."""
    if getattr(model, "network", None) is not None or learner is None:
        return ""  # the network's epochs are the Training section
    history = list(getattr(learner, "history", None) or [])
    if not history:
        return ""
    info = getattr(learner, "info", None) or {}
    kept = info.get("best_iteration")  # rounds kept, 1-based
    metric = info.get("metric") or "loss"
    png = plots.learning_curve(history, "loss", kept - 1 if isinstance(kept, int) and kept > 0 else None,
                               f"Loss per iteration ({metric})")
    return f'<div class="grid">{report.figure("learner_curve", png, "loss per iteration")}</div>' if png else ""


def leaderboard_of(model) -> list[dict] | None:
    """AutoML's leaderboard, from wherever the model keeps it (info, evaluation or the learner's info)."""
    learner = getattr(model, "learner", None)
    for source in (model.info, model.evaluation, getattr(learner, "info", None) or {}):
        board = source.get("leaderboard") if isinstance(source, dict) else None
        if isinstance(board, list) and board and all(isinstance(r, dict) for r in board):
            return board
    return None


def _dict_table(rows: list[dict]) -> str:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    return table(columns, [[r.get(c, "") if isinstance(r.get(c, ""), (int, float, str)) else _compact(r[c])
                            for c in columns] for r in rows], left=1)


def _leaderboard_section(report: Report, model) -> None:
    board = leaderboard_of(model)
    if board:
        report.add("leaderboard", "Leaderboard", f'<p class="muted">{len(board)} candidates, as AutoML ranked them '
                   "on the validation rows.</p>" + _dict_table(board))


def _compression_section(report: Report, c: dict) -> None:
    """``loopml compress``'s trade-off table: original vs compressed (loopml/compress/tradeoff.py)."""
    keys = ["network_bytes", "bundle_bytes", "p50_ms_batch1", "p99_ms_batch1", "p50_ms_batch64", "p99_ms_batch64", "value"]
    rows = [[r.get("model", ""), *[r.get(k, "") for k in keys]] for r in c.get("rows", []) if isinstance(r, dict)]
    metric = next((r.get("metric") for r in c.get("rows", []) if isinstance(r, dict)), "metric")
    facts = c.get("facts", {}) if isinstance(c.get("facts"), dict) else {}
    quantized = facts.get("quantized_ops") or (facts.get("quantization") or {}).get("quantized_ops")
    did = [f"{_compact(quantized)} quantised"] if quantized else []
    if isinstance(c.get("pruning"), dict) and c["pruning"].get("summary"):  # loopml/compress/prune.py
        did.append(str(c["pruning"]["summary"]))
    body = (f'<p>{html.escape(str(c.get("method", "")))}: {html.escape("".join(f"{d}; " for d in did))}'
            f'latency of the network alone, {html.escape(str(c.get("threads", 1)))} thread, interleaved runs; '
            f'{html.escape(str(metric))} on {html.escape(str(c.get("test_rows", "")))} {html.escape(str(c.get("split", "")))} '
            "rows.</p>")
    header = ["model", "network bytes", "bundle bytes", "p50 ms (1)", "p99 ms (1)", "p50 ms (64)", "p99 ms (64)", str(metric)]
    report.add("compression", "Compression trade-off", body + table(header, rows))


def _training_section(report: Report, model) -> None:
    epochs = model.history
    if not epochs or getattr(model, "network", "absent") is None:
        return
    t = model.info.get("training", {})
    best, monitor = t.get("best_epoch"), t.get("monitor", "loss")
    figures = [report.figure("loss_curve", plots.learning_curve(epochs, "loss", best, "Loss"), "loss")]
    metric = monitor if monitor != "loss" else ("r2" if model.schema.target_kind == "number" else "accuracy")
    figures.append(report.figure("metric_curve", plots.learning_curve(epochs, metric, best, metric.replace("_", " ").title()),
                                 metric))
    figures.append(report.figure("lr_schedule", plots.per_epoch(epochs, "lr", "Learning rate", "lr", log=True), "lr"))
    figures.append(report.figure("epoch_time", plots.per_epoch(epochs, "time", "Time per epoch", "seconds"), "time"))
    text = (f'<p>{t.get("epochs_run", len(epochs))} epochs in {t.get("seconds", 0):.1f} s; '
            f'best epoch {best + 1 if best is not None else "?"} by validation {html.escape(monitor)} '
            f'(early-stopping point); stopped: {html.escape(str(t.get("stop_reason", "")))}.</p>')
    report.add("training", "Training", text + f'<div class="grid">{"".join(figures)}</div>')


def _privacy_section(report: Report, model) -> None:
    p = model.info.get("training", {}).get("privacy")
    if not isinstance(p, dict):
        return
    cumulative = p.get("cumulative_epsilon")
    # δ and q as %g: a 4-decimal table cell shows δ = 1e-5 as 0.0000
    rows = [["ε spent (this training)", p["epsilon"]], ["δ", f"{p['delta']:g}"], ["target ε", p["target_epsilon"]],
            ["cumulative ε over the lineage", "none: an earlier version trained without DP" if cumulative is None
             else cumulative], ["accountant", p["accountant"]], ["noise multiplier", p["noise_multiplier"]],
            ["sample rate (Poisson)", f"{p['sample_rate']:g}"], ["steps", p["steps"]],
            ["max grad norm", p["max_grad_norm"]]]
    note = ('<p class="muted">DP-SGD (Opacus) covers the network weights. Preprocessing statistics, automatic class '
            "weights, the drift reference and the training-split metrics come from the training rows without noise; "
            "validation rows (early stopping, model selection) and hyper-parameter search trials are not "
            "accounted.</p>")
    report.add("privacy", "Differential privacy", table(["", ""], rows) + note)


def _evaluation_section(report: Report, ev: dict) -> None:
    y_true, scores, m = np.asarray(ev["y_true"]), np.asarray(ev["scores"]), ev["metrics"]
    heading = f"Evaluation on {ev['name']} ({ev['rows']} rows)"
    if ev["task"] == "number":
        figures = [report.figure("predicted_vs_actual", plots.predicted_vs_actual(y_true, scores)),
                   report.figure("residuals", plots.residuals(y_true, scores)),
                   report.figure("error_by_decile", plots.error_by_decile(y_true, scores))]
        report.add("evaluation", heading, metrics_table({ev["name"]: m}) + f'<div class="grid">{"".join(figures)}</div>')
        return
    y_true, classes = y_true.astype(int), ev["classes"]
    cm = m["confusion_matrix"]
    per_class = [[c, v["precision"], v["recall"], v["f1"], v["support"]] for c, v in m["per_class"].items()]
    figures = [report.figure("confusion_counts", plots.confusion(cm["matrix"], cm["labels"], False)),
               report.figure("confusion_normalized", plots.confusion(cm["matrix"], cm["labels"], True))]
    if len(np.unique(y_true)) > 1:
        figures += [report.figure("roc", plots.roc(y_true, scores, classes)),
                    report.figure("precision_recall", plots.precision_recall(y_true, scores, classes))]
    figures.append(report.figure("calibration", plots.reliability(y_true, scores)))
    if len(classes) == 2:
        figures.append(report.figure("threshold_f1", plots.threshold_f1(y_true, scores[:, 1], ev.get("threshold"))))
    body = (metrics_table({ev["name"]: m}) + "<h3>Per class</h3>"
            + table(["class", "precision", "recall", "F1", "support"], per_class) + f'<div class="grid">{"".join(figures)}</div>')
    report.add("evaluation", heading, body)


def _worst_section(report: Report, ev: dict) -> None:
    rows = ev.get("worst_errors", [])
    if not rows:
        return
    columns = list(dict.fromkeys(k for r in rows for k in (*r["images"], *r["inputs"])))
    table_rows = []
    for r in rows:
        cells = []
        for col in columns:
            if col in r["images"]:
                cells.append(Markup(f'<img alt="{html.escape(col)}" src="data:image/png;base64,{r["images"][col]}">'))
            else:
                cells.append(Markup(f'<div class="snippet">{html.escape(r["inputs"].get(col, ""))}</div>'))
        verdict = Markup('<span class="neg">wrong</span>' if r.get("wrong", True) else '<span class="pos">right</span>')
        table_rows.append([r["row"], r["actual"], r["predicted"], verdict, r["error"], *cells])
    what = "absolute error" if ev["task"] == "number" else "1 − p(actual class), wrong answers first"
    report.add("worst-errors", "Worst errors", f'<p class="muted">The {len(rows)} largest errors on {ev["name"]} '
               f"by {what}.</p>" + table(["row", "actual", "predicted", "", "error", *columns], table_rows, left=0))


def importance_section(report: Report, imp: dict, where: str) -> None:
    if imp.get("unavailable"):
        report.add("importance", "Feature importance",
                   f'<p class="muted">Not computed on the {html.escape(where)} rows: {html.escape(imp["unavailable"])}.</p>')
        return
    rows = [[f["feature"], f["mean"], f["std"]] for f in imp["features"]]
    report.add("importance", "Feature importance", report.figure("importance", plots.importance(imp))
               + f'<p class="muted">Permutation importance on {imp["rows"]} {html.escape(where)} rows; '
               f'baseline {imp["metric"]} {imp["baseline"]:.4f}.</p>' + table(["feature", "mean drop", "std"], rows))


def token_html(tokens: list[tuple[str, float]]) -> str:
    """Tokens on a red (towards the prediction) / blue (against) background."""
    top = max((abs(a) for _, a in tokens), default=0.0) or 1.0
    spans = []
    for token, a in tokens:
        alpha = min(1.0, abs(a) / top)
        color = f"rgba(220,40,40,{alpha:.2f})" if a > 0 else f"rgba(40,90,220,{alpha:.2f})"
        spans.append(f'<span class="tok" title="{a:+.4f}" style="background:{color}">{html.escape(token)}</span>')
    return " ".join(spans)


def explanation_section(report: Report, explanations: list[dict]) -> None:
    if any(row.get("method") == "contributions" for row in explanations):
        how = ("The learner's own per-row contributions (trees: TreeSHAP), summed per input column, from the "
               "model's mean score (bias).")
    else:
        how = "Integrated gradients from a reference input (unknown category, padding, black image)."
    body = [f'<p class="muted">{how} '
            "Red pushes towards the predicted class (regression: towards a higher value), blue against it.</p>"]
    for k, row in enumerate(explanations):
        proba = f" (p={row['probability']:.3f})" if row.get("probability") is not None else ""
        parts = [f"<h3>Row {row['row']}: predicted {html.escape(str(row['prediction']))}{proba}</h3>"]
        if len(row["features"]) > 1:
            parts.append(report.figure(f"explain_row{k}", plots.attributions(row["features"], f"Row {row['row']}")))
        for col, tokens in row["tokens"].items():
            parts.append(f"<p><b>{html.escape(col)}</b>: {token_html(tokens)}</p>")
        for col, item in row["pixels"].items():
            png = plots.saliency(base64.b64decode(item["image"]), np.asarray(item["saliency"]))
            parts.append(report.figure(f"saliency_row{k}_{len(report.figures)}", png, f"{col} saliency"))
        body.append(f'<div class="explanation">{"".join(parts)}</div>')
    report.add("explanations", "Explanations", "".join(body))


def cv_section(report: Report, cv: dict) -> None:
    keys = [k for k in KEY_METRICS if k in cv["mean"]]
    rows = [[f"fold {i + 1}", *[f.get(k, "") for k in keys]] for i, f in enumerate(cv["folds"])]
    rows += [["mean", *[cv["mean"][k] for k in keys]], ["std", *[cv["std"][k] for k in keys]]]
    report.add("cross-validation", f"Cross-validation ({len(cv['folds'])} folds)",
               f'<p class="muted">{html.escape(cv.get("description", ""))}</p>' + table(["", *keys], rows))


def _compare_section(report: Report, name: str, model, other_name: str, other) -> None:
    rows = []
    for split in [s for s in model.metrics if s in other.metrics]:
        a, b = model.metrics[split], other.metrics[split]
        for k in KEY_METRICS:
            if k in a and k in b:
                rows.append([split, k, a[k], b[k], Markup(_delta(a[k] - b[k], k))])
    body = table(["split", "metric", name, other_name, "Δ (this − other)"], rows, left=2) if rows else "<p>No common metrics.</p>"
    report.add("comparison", f"Comparison with {other_name}", body)


def _delta(value: float, metric: str) -> str:
    from loopml.evaluate.metrics import LOWER_IS_BETTER

    good = value < 0 if metric in LOWER_IS_BETTER or metric == "expected_calibration_error" else value > 0
    css = "pos" if good and value else ("neg" if value else "")
    return f'<span class="{css}">{value:+.4f}</span>'
