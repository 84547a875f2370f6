"""The HTML drift report: this window per column, and the history of windows."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from loopml.evaluate.plots import BLUE, GREY, ORANGE, _figure, _png  # noqa: E402
from loopml.evaluate.report import Report, table  # noqa: E402
from loopml.loop.drift import DRIFT  # noqa: E402


def drift_report(store, name: str, result: dict) -> Report:
    report = Report(f"{name}:{result['version']} drift — {result['rows']} predictions")
    columns = dict(result["columns"])
    if "predictions" in result:
        columns["(predictions)"] = result["predictions"]
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
        fig, ax = plt.subplots(figsize=(7, 3.2))
        top = sorted(names, key=lambda n: -columns[n]["psi"])[:6]
        for n in top:
            series = [(w["results"]["columns"].get(n) or w["results"].get("predictions") or {}).get("psi") for w in history]
            ax.plot(range(1, len(history) + 1), series, "o-", ms=3, label=n)
        ax.axhline(DRIFT, color=GREY, ls="--")
        ax.set_yscale("symlog", linthresh=0.1)
        ax.set_xlabel("window")
        ax.set_ylabel("PSI")
        ax.legend(fontsize=7)
        report.add("history", "Windows", report.figure("history", _png(fig)) + table(
            ["window", "version", "rows", "drift", "drifted"],
            [[w["id"], w["model_version"], w["rows"], w["drift"], ", ".join(w["results"].get("drifted", []))] for w in history]))
    return report
