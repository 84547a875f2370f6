"""loopml AutoML vs AutoGluon in one run, at the same time budgets, on the same split files.

    bash bench/peers/autogluon/install.sh                 # once: AutoGluon's own virtualenv
    python -m bench.automl                                # budgets 30,120 s, every dataset, both tools
    python -m bench.automl --budgets 10,30,60,120,300 --datasets adult,ag_news_test --curve
    python -m bench.automl --tools autogluon --name automl_autogluon
    python -m bench.automl --plot bench/results/automl.json [more.json ...] --name automl   # redraw the curves

Splits (../shared/ANCHORS.md): adult official train/test; the others stratified 80/20 with
random_state=0 (regression: on target deciles), sms_spam deduplicated first, ag_news text = title +
" " + description. The splits are written once as Parquet files and both tools read the same files;
each fit runs in its own process (loopml: this interpreter; AutoGluon: its venv's python) and both
are scored here by the same code from their test predictions. Writes bench/results/<name>.json and
.md, and with --curve <name>_curve_<dataset>.png.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]
AG_RUNNER = ROOT / "bench" / "peers" / "autogluon" / "run.py"
DEFAULT_AG_PYTHON = "/work/venvs/autogluon/bin/python"
#: dataset -> label, problem type, metrics (the first is the curve's), positive class for binary scores
SPECS = {
    "adult": ("income", "binary", ["accuracy", "roc_auc"], ">50K"),
    "california_housing": ("median_house_value", "regression", ["r2"], None),
    "titanic": ("Survived", "binary", ["accuracy"], "1"),
    "sms_spam": ("label", "binary", ["spam_f1", "accuracy"], "spam"),
    "ag_news_test": ("label", "multiclass", ["accuracy"], None),
}
ACC_TIE = 0.0026  # accuracy's standard error on these test sets (issue 12): within it counts as a tie


def splits(name: str):
    """(train, test) DataFrames for one dataset, as ../shared/ANCHORS.md splits them."""
    import pandas as pd
    from sklearn.model_selection import train_test_split

    from bench import realdata

    if name == "adult":
        return realdata.adult()
    label, problem, _, _ = SPECS[name]
    df = {"california_housing": realdata.california_housing, "titanic": realdata.titanic,
          "sms_spam": realdata.sms_spam, "ag_news_test": realdata.ag_news}[name]()
    if name == "sms_spam":
        df = df.drop_duplicates().reset_index(drop=True)
    strata = df[label] if problem != "regression" else pd.qcut(df[label].rank(method="first"), 10, labels=False)
    train, test = train_test_split(df, test_size=0.2, random_state=0, stratify=strata)
    return train.reset_index(drop=True), test.reset_index(drop=True)


def _key(value) -> str:
    """One spelling for a label from either tool (1, 1.0, '1' and ' 1' agree)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def score(name: str, truth, pred: list, proba: dict | None) -> dict:
    import numpy as np
    from sklearn.metrics import accuracy_score, f1_score, r2_score, roc_auc_score

    _, problem, metrics, positive = SPECS[name]
    if problem == "regression":
        return {"r2": float(r2_score(np.asarray(truth, dtype=float), np.asarray(pred, dtype=float)))}
    y = [_key(v) for v in truth]
    p = [_key(v) for v in pred]
    out = {"accuracy": float(accuracy_score(y, p))}
    if "spam_f1" in metrics:
        out["spam_f1"] = float(f1_score(y, p, pos_label=positive))
    if "roc_auc" in metrics and proba:
        column = {_key(k): v for k, v in proba.items()}[positive]
        out["roc_auc"] = float(roc_auc_score([v == positive for v in y], column))
    return out


def _run(cmd: list[str], timeout: float, env: dict | None = None) -> tuple[int, str, float, float]:
    """Run a child; its exit code, stderr tail, wall seconds and CPU seconds (itself and what it waited for)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
        code, err = proc.returncode, proc.stderr
    except subprocess.TimeoutExpired as e:
        code, err = -9, f"timed out after {timeout:.0f} s\n{(e.stderr or b'')[-2000:]!r}"
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return code, err[-3000:], wall, cpu


def _wait_quiet(max_load: float | None, patience: float = 180.0) -> float:
    """Wait (at most ``patience`` s) for the 1-minute load average to fall under ``max_load``; seconds waited."""
    start = time.perf_counter()
    while max_load is not None and os.getloadavg()[0] >= max_load and time.perf_counter() - start < patience:
        time.sleep(5)
    return time.perf_counter() - start


def run_tool(tool: str, name: str, budget: float, files: dict, args, work: Path) -> dict:
    label, problem, _, _ = SPECS[name]
    out = work / f"{tool}-{name}-{budget:g}.json"
    if tool == "autogluon":
        cmd = [args.autogluon_python, str(AG_RUNNER), "--train", str(files["train"]), "--test", str(files["test"]),
               "--label", label, "--problem-type", problem, "--time-limit", str(budget),
               "--workdir", str(work / f"ag-{name}-{budget:g}"), "--out", str(out),
               *(["--num-cpus", str(args.autogluon_num_cpus)] if args.autogluon_num_cpus else [])]
    else:
        cmd = [sys.executable, "-m", "bench.automl", "_loopml", "--train", str(files["train"]), "--test",
               str(files["test"]), "--label", label, "--budget", str(budget), "--config", args.loopml_config,
               "--out", str(out), *(["--preset", args.preset] if args.preset else [])]
    waited = _wait_quiet(args.max_load)
    load = os.getloadavg()[0]
    code, err, wall, cpu = _run(cmd, timeout=max(600.0, 4 * budget + 300))
    record = {"dataset": name, "budget_s": budget, "tool": tool, "process_s": wall, "cpu_s": cpu, "load1_before": load,
              "waited_for_quiet_s": waited}
    if code != 0 or not out.exists():
        record["error"] = err.strip().splitlines()[-1] if err.strip() else f"exit {code}"
        record["stderr_tail"] = err[-1500:]
        return record
    child = json.loads(out.read_text())
    record.update({k: v for k, v in child.items() if k not in ("pred", "proba")})
    record["metrics"] = score(name, files["truth"], child["pred"], child["proba"])
    return record


# -- the loopml side (this interpreter, its own process) -------------------------------------------------------
def loopml_child(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="bench.automl _loopml")
    for flag in ("--train", "--test", "--label", "--config", "--out"):
        parser.add_argument(flag, required=True)
    parser.add_argument("--budget", type=float, required=True)
    parser.add_argument("--preset", default=None)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    import pandas as pd

    import loopml

    imported = time.perf_counter()
    # the test file is ours to score: loopml carves only its validation split from the train file
    config = {"target": args.label, "split": {"test": 0.0}, **json.loads(args.config)}
    # a named learner in --loopml-config means no AutoML (to try the harness, or a baseline)
    automl = {} if "learner" in config else {"time_budget": args.budget, "preset": args.preset}
    model = loopml.Model(config, **automl)
    fit_start = time.perf_counter()
    model.fit(args.train, progress=False)
    fit_s = time.perf_counter() - fit_start
    test = pd.read_parquet(args.test).drop(columns=[args.label])
    predict_start = time.perf_counter()
    pred = model.predict(test)
    proba = model.predict_proba(test) if model.schema.target_kind != "number" else None
    predict_s = time.perf_counter() - predict_start
    from loopml.evaluate.report import leaderboard_of

    out = {"tool": "loopml", "version": getattr(loopml, "__version__", "?"),
           "config": model.config.model_dump(mode="json", include={"learner", "automl"}),
           "import_s": imported - start, "fit_s": fit_s, "predict_s": predict_s, "leaderboard": leaderboard_of(model),
           "pred": [v.item() if hasattr(v, "item") else v for v in pred],
           "proba": None if proba is None else {str(c): proba[c].astype(float).tolist() for c in proba.columns}}
    Path(args.out).write_text(json.dumps(out, default=str))


# -- report ----------------------------------------------------------------------------------------------------
def table(runs: list[dict]) -> str:
    tools = sorted({r["tool"] for r in runs}, key=["loopml", "autogluon"].index)
    lines = ["| dataset | metric | budget s | " + " | ".join(f"{t} | {t} fit s" for t in tools) + " |",
             "|---|---|---|" + "---|---|" * len(tools)]
    cell = {(r["dataset"], r["budget_s"], r["tool"]): r for r in runs}
    for name in SPECS:
        for budget in sorted({r["budget_s"] for r in runs if r["dataset"] == name}):
            for metric in SPECS[name][2]:
                row = [name, metric, f"{budget:g}"]
                for tool in tools:
                    r = cell.get((name, budget, tool))
                    if r is None:
                        row += ["—", "—"]
                    elif "error" in r:
                        row += [f"error: {r['error'][:60]}", f"{r['process_s']:.0f}"]
                    else:  # "!" marks a fit that ran over its budget by more than 10%
                        over = "!" if r["fit_s"] > 1.1 * budget else ""
                        row += [f"{r['metrics'].get(metric, float('nan')):.4f}", f"{r['fit_s']:.1f}{over}"]
                lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def verdicts(runs: list[dict]) -> list[str]:
    """Issue 12's goals, each stated with both numbers (only where both tools ran)."""
    got = {(r["dataset"], r["budget_s"], r["tool"]): r["metrics"] for r in runs if "metrics" in r}
    out = []

    def compare(name, ours_budget, theirs_budget, metric):
        ours, theirs = got.get((name, ours_budget, "loopml")), got.get((name, theirs_budget, "autogluon"))
        if ours is None or theirs is None or metric not in ours or metric not in theirs:
            return
        slack = ACC_TIE if metric == "accuracy" else 0.0  # AUC, R², F1 must be ≥
        ok = ours[metric] >= theirs[metric] - slack
        out.append(f"{'MET ' if ok else 'MISS'} {name} {metric}: loopml@{ours_budget:g}s {ours[metric]:.4f} vs "
                   f"AutoGluon@{theirs_budget:g}s {theirs[metric]:.4f}")

    for name in SPECS:
        for metric in SPECS[name][2]:
            compare(name, 120.0, 120.0, metric)
    for name in ("adult", "california_housing"):
        for metric in SPECS[name][2]:
            compare(name, 30.0, 120.0, metric)
    for name, metric, floor in (("ag_news_test", "accuracy", 0.90), ("sms_spam", "spam_f1", 0.945)):
        m = got.get((name, 120.0, "loopml"))
        if m is not None:
            out.append(f"{'MET ' if m[metric] >= floor else 'MISS'} {name} {metric} ≥ {floor}: loopml@120s {m[metric]:.4f}")
    return out


def curves(runs: list[dict], name: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bench.common import RESULTS

    written = []
    for dataset in ("adult", "ag_news_test"):
        fig, ax = plt.subplots(figsize=(6, 4))
        drawn = False
        for tool, style in (("loopml", "o-"), ("autogluon", "s--")):
            points = sorted((r["budget_s"], r["metrics"]["accuracy"], r["fit_s"]) for r in runs
                            if r["dataset"] == dataset and r["tool"] == tool and "metrics" in r)
            if not points:
                continue
            drawn = True
            ax.plot([p[0] for p in points], [p[1] for p in points], style, label=tool)
            for b, acc, used in points:
                ax.annotate(f"{used:.0f}s", (b, acc), textcoords="offset points", xytext=(4, -10), fontsize=7)
        if not drawn:
            plt.close(fig)
            continue
        ax.set_xscale("log")
        ticks = sorted({r["budget_s"] for r in runs if r["dataset"] == dataset})
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("time budget (s, log scale; labels: fit seconds used)")
        ax.set_ylabel("test accuracy")
        ax.set_title(f"{dataset}: accuracy vs time budget")
        ax.grid(True, alpha=0.3)
        ax.legend()
        path = RESULTS / f"{name}_curve_{dataset}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written


def write(name: str, runs: list[dict], meta: dict) -> None:
    from bench.common import RESULTS, write_result

    write_result(name, {**meta, "runs": runs})
    notes = "\n".join(f"- {v}" for v in verdicts(runs)) or "- (goals need both tools at 30 and 120 s)"
    (RESULTS / f"{name}.md").write_text(
        f"# loopml AutoML vs AutoGluon ({time.strftime('%Y-%m-%d %H:%M')})\n\n"
        f"`python -m bench.automl {shlex.join(meta['argv'])}`. Same split files for both tools; metrics computed "
        f"by bench/automl.py from each tool's test predictions; fit s = the tool's own fit call (wall clock; "
        f"! = over budget by >10%). "
        f"Machine: {meta['cpus']} CPUs, shared and loaded (load average before each run in the JSON), so "
        f"timings are noisy.\n\n{table(runs)}\n\n## Goals (issue 12)\n{notes}\n")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_loopml":
        return loopml_child(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budgets", default="30,120", help="comma-separated seconds")
    parser.add_argument("--datasets", default=",".join(SPECS), help=f"comma-separated, of {', '.join(SPECS)}")
    parser.add_argument("--tools", default="loopml,autogluon")
    parser.add_argument("--autogluon-python", default=DEFAULT_AG_PYTHON)
    parser.add_argument("--autogluon-num-cpus", type=int, default=None,
                        help="cores AutoGluon may use (default: AutoGluon's own choice, all of them)")
    parser.add_argument("--loopml-config", default="{}",
                        help='JSON merged into loopml\'s config, e.g. \'{"learner": "lightgbm"}\'')
    parser.add_argument("--max-load", type=float, default=None,
                        help="before each fit, wait (up to 3 min) until the 1-minute load average is below this")
    parser.add_argument("--preset", choices=["fast", "best"], help="loopml's AutoML preset (default: loopml's)")
    parser.add_argument("--name", default="automl", help="result files: bench/results/<name>.{json,md}")
    parser.add_argument("--curve", action="store_true", help="also draw accuracy-vs-budget PNGs (adult, ag_news)")
    parser.add_argument("--plot", metavar="JSON", nargs="+",
                        help="only draw the curves (as <name>_curve_*.png) from earlier results")
    args = parser.parse_args()
    if args.plot:  # several results (e.g. one run per budget set) are drawn as one curve per tool
        runs = [r for path in args.plot for r in json.loads(Path(path).read_text())["runs"]]
        print("\n".join(map(str, curves(runs, args.name))))
        return
    budgets = [float(b) for b in args.budgets.split(",")]
    datasets = args.datasets.split(",")
    tools = args.tools.split(",")
    bad = [d for d in datasets if d not in SPECS] + [t for t in tools if t not in ("loopml", "autogluon")]
    if bad:
        sys.exit(f"unknown dataset/tool {bad[0]!r}; datasets: {', '.join(SPECS)}; tools: loopml, autogluon")
    if "autogluon" in tools and not Path(args.autogluon_python).exists():
        sys.exit(f"no AutoGluon virtualenv at {args.autogluon_python}: bash bench/peers/autogluon/install.sh")
    meta = {"argv": sys.argv[1:], "budgets_s": budgets, "tools": tools, "cpus": os.cpu_count(),
            "loopml_config": json.loads(args.loopml_config)}
    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-automl-") as tmp:
        work = Path(tmp)
        for name in datasets:
            train, test = splits(name)
            files = {"train": work / f"{name}-train.parquet", "test": work / f"{name}-test.parquet",
                     "truth": test[SPECS[name][0]].tolist()}
            train.to_parquet(files["train"], index=False)
            test.to_parquet(files["test"], index=False)
            print(f"{name}: train {len(train)} rows, test {len(test)} rows", flush=True)
            for budget in budgets:
                for tool in tools:
                    r = run_tool(tool, name, budget, files, args, work)
                    runs.append(r)
                    shown = r.get("error") or ", ".join(f"{k} {v:.4f}" for k, v in r["metrics"].items())
                    used = f"fit {r['fit_s']:.1f} s, " if "fit_s" in r else ""
                    print(f"  {tool:9s} budget {budget:g} s: {shown} ({used}process {r['process_s']:.1f} s, "
                          f"cpu {r['cpu_s']:.1f} s, load {r['load1_before']:.1f})", flush=True)
                    write(args.name, runs, meta)  # after every fit: a long run keeps what it measured
    for line in verdicts(runs):
        print(line)
    if args.curve:
        for path in curves(runs, args.name):
            print("curve:", path)
    print("results:", ROOT / "bench" / "results" / f"{args.name}.json")


if __name__ == "__main__":
    main()
