"""The HTML drift report: this window per column, and the history of windows."""

from __future__ import annotations

from loopml.evaluate.plots import BLUE, GREY, ORANGE, _figure, _png, psi_history
from loopml.evaluate.report import Report, table
from loopml.loop.drift import DRIFT

PREDICTIONS = "(predictions)"
#: the history chart follows this many columns (those drifting most in this window)
HISTORY_COLUMNS = 6


def window_psi(window: dict, name: str) -> float | None:
    """A stored window's PSI for column ``name`` (``PREDICTIONS``: the prediction drift); None when that window
    did not measure it (a column added later, a window without prediction drift)."""
    results = window.get("results") if isinstance(window.get("results"), dict) else {}
    if name == PREDICTIONS:
        cell = results.get("predictions")
    else:
        columns = results.get("columns")
        cell = columns.get(name) if isinstance(columns, dict) else None
    psi = cell.get("psi") if isinstance(cell, dict) else None
    return float(psi) if isinstance(psi, int | float) and not isinstance(psi, bool) else None


def drift_report(store, name: str, result: dict) -> Report:
    report = Report(f"{name}:{result['version']} drift — {result['rows']} predictions")
    columns = dict(result["columns"])
    if "predictions" in result:
        columns[PREDICTIONS] = result["predictions"]
    names = list(columns)
    fig, ax = _figure(6.5, max(2.5, 0.32 * len(names) + 1))
    values = [columns[n]["psi"] for n in names]
    ax.barh(names, values, color=[ORANGE if columns[n]["level"] == "drift" else BLUE for n in names])
    ax.axvline(DRIFT, color=GREY, ls="--", label=f"drift threshold {DRIFT} (+ window noise)")
    ax.set_xscale("symlog", linthresh=0.1)
    ax.set_xlabel("population stability index")
    ax.legend(fontsize=7)
    rows = [[n, d["kind"], d["psi"], d["noise"], d.get("ks", ""), d.get("wasserstein", ""), d.get("chi2_p", ""), d["level"]]
            for n, d in columns.items()]
    report.add("window", "This window", f"<p>drift: <b>{'yes' if result['drift'] else 'no'}</b>; live: {result['live']}</p>"
               + report.figure("psi", _png(fig)) + table(["column", "kind", "PSI", "noise", "KS", "Wasserstein/σ",
                                                           "χ² p", "level"], rows))
    history = store.list_drift_windows(name, limit=200)[::-1]
    if len(history) > 1:
        # the dashboard's monitor page draws the same chart (one plotting code path)
        top = sorted(names, key=lambda n: -columns[n]["psi"])[:HISTORY_COLUMNS]
        chart = psi_history([f"#{w['id']}" for w in history], {n: [window_psi(w, n) for w in history] for n in top},
                            DRIFT)
        report.add("history", "Windows", report.figure("history", chart) + table(
            ["window", "version", "rows", "drift", "drifted"],
            [[w["id"], w["model_version"], w["rows"], w["drift"], ", ".join(w["results"].get("drifted", []))] for w in history]))
    return report
