"""Issue 4's measured claims: cross-validation vs a single split, threshold tuning, class imbalance,
permutation importance and text attributions, on the full shared datasets.

    python -m bench.evaluation [--only cv,threshold,imbalance,explain]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402

import loopml  # noqa: E402
from bench import realdata  # noqa: E402
from bench.common import write_result  # noqa: E402
from loopml.cv import cross_validate  # noqa: E402

QUIET = {"progress": False}


def difference_noise(fold_std: float, seed_std: float, k: int = 5) -> float:
    """Standard deviation of (CV mean − one split's score).

    One split's test set is one draw like a fold (spread ≈ the fold spread), plus the training-seed
    spread; the CV mean averages K such draws.
    """
    return (fold_std**2 + fold_std**2 / k + seed_std**2) ** 0.5


def cv_case(name: str, df: pd.DataFrame, target: str, metrics: tuple[str, ...], extra: dict) -> dict:
    start = time.perf_counter()
    cv = cross_validate({"target": target, **extra}, df, folds=5, seed=0)
    cv_seconds = time.perf_counter() - start
    singles = []
    for seed in range(5):  # the single 70/10/20 split, 5 training seeds: its noise
        model = loopml.Model({"target": target, **extra, "training": {"seed": seed}}).fit(df, **QUIET)
        singles.append(model.metrics["test"])
    out = {"rows": len(df), "cv_seconds": cv_seconds, "folds": cv["folds"]}
    for m in metrics:
        single = [s[m] for s in singles]
        mean, std = statistics.mean(single), statistics.stdev(single)
        diff = cv["mean"][m] - mean
        noise = difference_noise(cv["std"][m], std)
        out[m] = {"cv_mean": cv["mean"][m], "cv_std": cv["std"][m], "single_mean": mean, "single_std": std,
                  "difference": diff, "within_2_sigma": abs(diff) <= 2 * noise}
        print(f"{name} {m}: CV {cv['mean'][m]:.4f} ± {cv['std'][m]:.4f} | single split {mean:.4f} ± {std:.4f} "
              f"| diff {diff:+.4f} (2σ = {2 * noise:.4f})", flush=True)
    return out


def threshold_case() -> dict:
    train, test = realdata.adult()
    out = {}
    for setting in (0.5, "auto"):
        model = loopml.Model({"target": {"column": "income", "threshold": setting}}).fit(train, test=test, **QUIET)
        m = model.metrics["test"]
        out[str(setting)] = {"threshold": model.preprocessor.target.state.get("threshold", 0.5), "f1": m["f1"],
                             "accuracy": m["accuracy"], "precision": m["per_class"][">50K"]["precision"],
                             "recall": m["per_class"][">50K"]["recall"]}
        print(f"adult threshold {setting}: used {out[str(setting)]['threshold']:.2f}, F1(>50K) {m['f1']:.4f}, "
              f"accuracy {m['accuracy']:.4f}", flush=True)
    return out


def imbalance_case(seeds: int = 3) -> dict:
    """sms_spam: a fixed natural-balance evaluation set, training data with spam cut to 3%."""
    df = realdata.sms_spam().drop_duplicates().reset_index(drop=True)
    evaluation = df.groupby("label", group_keys=False).sample(frac=0.2, random_state=0)
    rest = df.drop(evaluation.index)
    ham, spam = rest[rest.label == "ham"], rest[rest.label == "spam"]
    n_spam = round(0.03 * len(ham) / 0.97)
    train = pd.concat([ham, spam.sample(n=n_spam, random_state=0)]).sample(frac=1.0, random_state=0)
    settings = {"plain": {}, "class_weights": {"class_weights": "auto"}, "oversample": {"sampling": "oversample"},
                "undersample": {"sampling": "undersample"}}
    out = {"train_rows": len(train), "train_spam": n_spam, "eval_rows": len(evaluation),
           "eval_spam": int((evaluation.label == "spam").sum())}
    for name, target_extra in settings.items():
        runs = defaultdict(list)
        for seed in range(seeds):
            model = loopml.Model({"target": {"column": "label", **target_extra}, "training": {"seed": seed}}).fit(train, **QUIET)
            m = model.evaluate(evaluation)
            spam = m["per_class"]["spam"]
            for key, value in (("spam_recall", spam["recall"]), ("spam_precision", spam["precision"]),
                               ("spam_f1", m["f1"]), ("accuracy", m["accuracy"])):
                runs[key].append(value)
        out[name] = {k: statistics.mean(v) for k, v in runs.items()} | {"spam_recall_runs": runs["spam_recall"]}
        print(f"imbalanced sms ({n_spam} spam of {len(train)}): {name}: spam recall {out[name]['spam_recall']:.4f}, "
              f"precision {out[name]['spam_precision']:.4f}, F1 {out[name]['spam_f1']:.4f}", flush=True)
    return out


def explain_case() -> dict:
    train, test = realdata.adult()
    model = loopml.Model(target="income").fit(train, test=test, **QUIET)
    importance = model.evaluation["importance"]
    top = [(f["feature"], round(f["mean"], 4), round(f["std"], 4)) for f in importance["features"]]
    print("adult permutation importance (roc_auc drop):", top[:5], flush=True)
    sms = realdata.sms_spam()
    spam_model = loopml.Model({"target": "label", "split": {"duplicates": "drop"}}).fit(sms, **QUIET)
    spam_rows = [i for i in range(len(sms)) if sms.label.iloc[i] == "spam"][:40]
    # attributions point towards each row's predicted class: keep the rows predicted spam
    rows = [r for r in spam_model.explain(sms, spam_rows) if r["prediction"] == "spam"]
    totals: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        for token, score in row["tokens"]["text"]:
            totals[token].append(score)
    ranked = sorted(((t, statistics.mean(v), len(v)) for t, v in totals.items() if len(v) >= 3), key=lambda x: -x[1])
    example = max(rows[:10], key=lambda r: len(r["tokens"]["text"]))
    example_top = sorted(example["tokens"]["text"], key=lambda x: -x[1])[:6]
    print(f"sms: tokens pushing towards spam (mean IG over {len(rows)} messages predicted spam, seen >= 3 times):",
          ranked[:12], flush=True)
    print("example row", example["row"], "top tokens:", example_top, flush=True)
    shown = sms.iloc[sorted(set(spam_rows) | set(range(300)))]
    spam_model.report(Path("bench/results/sms_explain_report/report.html"), data=shown, explain=[0, 1, 2])
    return {"adult_importance": top, "sms_top_spam_tokens": ranked[:20], "sms_example": {"row": example["row"],
            "top_tokens": example_top}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", default="cv,threshold,imbalance,explain")
    args = parser.parse_args()
    parts = args.only.split(",")
    result = {}
    if "threshold" in parts:
        result["threshold"] = threshold_case()
    if "imbalance" in parts:
        result["imbalance"] = imbalance_case()
    if "explain" in parts:
        result["explain"] = explain_case()
    if "cv" in parts:
        train, test = realdata.adult()
        result["cv_adult"] = cv_case("adult", pd.concat([train, test], ignore_index=True), "income",
                                     ("accuracy", "roc_auc", "f1"), {})
        result["cv_sms_spam"] = cv_case("sms_spam", realdata.sms_spam(), "label", ("accuracy", "f1"),
                                        {"split": {"duplicates": "drop"}})
    path = write_result("evaluation" if len(parts) == 4 else f"evaluation_{'_'.join(parts)}", result)
    print(f"written {path}")


if __name__ == "__main__":
    main()
