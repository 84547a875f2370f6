"""Issue 18: does CVAE synthesis of minority rows (``target.synthesize``) beat class weights?

adult with the positive class (>50K) cut to 3% of the official training rows (a fresh cut per
seed), minority-class F1 on the official test set (natural balance), mean ± std over seeds, for
the default network learner and LightGBM. Also: how close the synthetic >50K rows are to the real
ones (numbers: mean/std; categories: total-variation distance of the frequencies).

    python -m bench.synthesize [--seeds 3] [--learners network,lightgbm]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import loopml  # noqa: E402
from bench import realdata  # noqa: E402
from bench.common import RESULTS, write_result  # noqa: E402

POSITIVE = ">50K"
SETTINGS = {
    "class_weights": {"class_weights": "auto"},
    "class_weights + cvae(0.5)": {"class_weights": "auto", "synthesize": {"method": "cvae", "ratio": 0.5}},
    "cvae(1.0)": {"synthesize": {"method": "cvae", "ratio": 1.0}},
    "smote(1.0)": {"sampling": "smote", "sampling_ratio": 1.0},
}
#: smote works on the network's tensors only; LightGBM gets random oversampling as its reference instead
TREE_REFERENCE = {"oversample(1.0)": {"sampling": "oversample", "sampling_ratio": 1.0}}
_FITS: dict = {}


def reuse_cvae_fits() -> None:
    """The CVAE fit is deterministic in (training rows, seed, settings other than ratio): fit it once per cut
    and reuse it across settings and learners (the bench's time, not a change to what is measured)."""
    from loopml.train import synthesize

    fit = synthesize.fit

    def cached(frame: pd.DataFrame, y: np.ndarray, kinds: dict, n_classes: int, params) -> object:
        key = (int(pd.util.hash_pandas_object(frame, index=False).sum()), y.tobytes(), n_classes,
               params.model_copy(update={"ratio": 1.0}).model_dump_json())
        if key not in _FITS:
            _FITS[key] = fit(frame, y, kinds, n_classes, params)
        return _FITS[key]

    synthesize.fit = cached


def cut(train: pd.DataFrame, seed: int, share: float = 0.03) -> pd.DataFrame:
    """All negatives, and positives sampled so they are ``share`` of the rows."""
    neg, pos = train[train.income != POSITIVE], train[train.income == POSITIVE]
    n_pos = round(share * len(neg) / (1 - share))
    return pd.concat([neg, pos.sample(n=n_pos, random_state=seed)]).sample(frac=1.0, random_state=seed)


def run_case(train: pd.DataFrame, test: pd.DataFrame, learner: str, target_extra: dict, seed: int) -> dict:
    config = {"target": {"column": "income", **target_extra}, "training": {"seed": seed}}
    if learner != "network":
        config["learner"] = {"type": learner}
    start = time.perf_counter()
    model = loopml.Model(config).fit(train, test=test, progress=False)
    m = model.metrics["test"]
    synthesized = model.info["training"].get("synthesized") or {}
    return {"f1": m["per_class"][POSITIVE]["f1"], "precision": m["per_class"][POSITIVE]["precision"],
            "recall": m["per_class"][POSITIVE]["recall"], "roc_auc": m.get("roc_auc"), "accuracy": m["accuracy"],
            "synthesized_rows": synthesized.get("rows", 0), "cvae_seconds": synthesized.get("fit_seconds", 0.0),
            "seconds": time.perf_counter() - start}


def plausibility(train: pd.DataFrame, seed: int) -> dict:
    """Synthetic >50K rows against the real >50K training rows, per column."""
    from loopml.config import SynthesizeConfig
    from loopml.schema import build_schema
    from loopml.train import synthesize

    model = loopml.Model({"target": {"column": "income"}})
    kinds = {c.name: c.type for c in build_schema(train, model.config).inputs}
    columns = [c for c, k in kinds.items() if k in synthesize.TABULAR]
    y = (train.income == POSITIVE).to_numpy().astype(np.int64)
    synth = synthesize.fit(train[columns].reset_index(drop=True), y, {c: kinds[c] for c in columns}, 2,
                           SynthesizeConfig(seed=seed))
    real = train[columns][y == 1].reset_index(drop=True)
    fake = synth.sample(1, len(real))
    other = train[columns][y == 0].reset_index(drop=True)
    out = {}
    for col in columns:
        if kinds[col] == "number":
            r, f, o = (pd.to_numeric(d[col], errors="coerce") for d in (real, fake, other))
            out[col] = {"real_mean": float(r.mean()), "synthetic_mean": float(f.mean()), "majority_mean": float(o.mean()),
                        "real_std": float(r.std()), "synthetic_std": float(f.std())}
        else:
            freq = [d[col].astype(str).value_counts(normalize=True) for d in (real, fake, other)]
            out[col] = {"tvd_synthetic_vs_real": _tvd(freq[1], freq[0]), "tvd_majority_vs_real": _tvd(freq[2], freq[0])}
    return out


def _tvd(a: pd.Series, b: pd.Series) -> float:
    return 0.5 * float(a.sub(b, fill_value=0).abs().sum())


def summary(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def write_md(result: dict) -> None:
    lines = [f"# synthesize: CVAE minority rows vs class weights on adult, >50K cut to 3% of training rows "
             f"({result['seeds']} seeds)", "",
             f"Training rows per seed: {result['train_rows']} ({result['train_positives']} >50K); official test set "
             f"{result['test_rows']} rows ({result['test_positives']} >50K). Minority (>50K) F1 on the test set at the "
             "default 0.5 threshold, mean ± std over seeds (each seed: its own cut and training seed). "
             "The CVAE (default settings: 30 epochs, batch 512) is fitted once per cut on its training split and "
             "reused by every setting/learner of that cut. "
             f"Machine load at start: {result['load_at_start']}.", ""]
    for learner, rows in result["learners"].items():
        lines += [f"## {learner}", "", "| setting | F1 (>50K) | precision | recall | ROC-AUC | synthetic rows | "
                  "CVAE fit s |", "|---|---:|---:|---:|---:|---:|---:|"]
        for name, r in rows.items():
            lines.append(f"| {name} | {r['f1_mean']:.4f} ± {r['f1_std']:.4f} | {r['precision_mean']:.4f} | "
                         f"{r['recall_mean']:.4f} | {r['roc_auc_mean']:.4f} | {r['synthesized_rows_mean']:.0f} | "
                         f"{r['cvae_seconds_mean']:.1f} |")
        lines.append("")
    lines += ["## Verdict", "", *result["verdict"], "", "## Plausibility of the synthetic >50K rows (seed 0, "
              "CVAE fitted on one cut's training rows)", "", "| column | synthetic | real >50K | majority (<=50K) |",
              "|---|---:|---:|---:|"]
    for col, p in result["plausibility"].items():
        if "real_mean" in p:
            lines.append(f"| {col} (mean ± std) | {p['synthetic_mean']:.2f} ± {p['synthetic_std']:.2f} | "
                         f"{p['real_mean']:.2f} ± {p['real_std']:.2f} | {p['majority_mean']:.2f} |")
        else:
            lines.append(f"| {col} (TVD to real >50K) | {p['tvd_synthetic_vs_real']:.3f} | 0 | "
                         f"{p['tvd_majority_vs_real']:.3f} |")
    lines.append("")
    (RESULTS / "synthesize.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--learners", default="network,lightgbm")
    args = parser.parse_args()
    load = os.getloadavg()
    reuse_cvae_fits()
    full_train, test = realdata.adult()
    result: dict = {"seeds": args.seeds, "settings": SETTINGS, "load_at_start": [round(v, 2) for v in load],
                    "test_rows": len(test), "test_positives": int((test.income == POSITIVE).sum()), "learners": {}}
    cuts = [cut(full_train, seed) for seed in range(args.seeds)]
    result["train_rows"], result["train_positives"] = len(cuts[0]), int((cuts[0].income == POSITIVE).sum())
    result["plausibility"] = {}
    for learner in args.learners.split(","):
        rows = {}
        settings = SETTINGS if learner == "network" else {
            **{k: v for k, v in SETTINGS.items() if "smote" not in k}, **TREE_REFERENCE}
        for name, extra in settings.items():
            runs = [run_case(cuts[seed], test, learner, extra, seed) for seed in range(args.seeds)]
            rows[name] = {"runs": runs}
            for key in runs[0]:
                values = [r[key] for r in runs if r[key] is not None]
                rows[name][f"{key}_mean"], rows[name][f"{key}_std"] = summary(values) if values else (float("nan"),) * 2
            print(f"{learner} {name}: F1 {rows[name]['f1_mean']:.4f} ± {rows[name]['f1_std']:.4f}", flush=True)
        result["learners"][learner] = rows
        if not result["plausibility"]:
            result["plausibility"] = plausibility(cuts[0], 0)
        result["verdict"] = verdicts(result)
        write_result("synthesize", result)  # after each learner: a partial result survives an interrupted run
        write_md(result)
    print("\n".join(result["verdict"]))
    print(json.dumps(result["plausibility"], indent=1)[:2000])


def verdicts(result: dict) -> list[str]:
    verdict = []
    for learner, rows in result["learners"].items():
        base = rows["class_weights"]
        for name in ("class_weights + cvae(0.5)", "cvae(1.0)"):
            delta = rows[name]["f1_mean"] - base["f1_mean"]
            noise = (base["f1_std"] ** 2 + rows[name]["f1_std"] ** 2) ** 0.5
            word = "helps" if delta > noise else "hurts" if delta < -noise else "no clear difference"
            verdict.append(f"- {learner}: {name} vs class weights alone: {delta:+.4f} F1 ({word}; combined std "
                           f"{noise:.4f})")
    return verdict


if __name__ == "__main__":
    main()
