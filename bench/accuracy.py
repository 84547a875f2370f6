"""Default-settings accuracy on every shared tabular/text dataset, whole data, fixed seeds.

    python -m bench.accuracy [--seeds 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import loopml  # noqa: E402
from bench import realdata  # noqa: E402
from bench.common import write_result  # noqa: E402

KEYS = ("accuracy", "roc_auc", "f1", "r2", "mae")


def cases():
    if realdata.available("adult"):
        train, test = realdata.adult()
        yield "adult", "income", train, {"test": test}, {}
    if realdata.available("titanic"):
        yield "titanic", "Survived", realdata.titanic(), {}, {}
    if realdata.available("california_housing"):
        yield "california_housing", "median_house_value", realdata.california_housing(), {}, {}
    if realdata.available("sms_spam"):
        yield "sms_spam", "label", realdata.sms_spam(), {}, {"split": {"duplicates": "drop"}}
    if realdata.available("ag_news_test"):
        yield "ag_news_test", "label", realdata.ag_news(), {}, {}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=5, help="training seeds per dataset (the split stays fixed)")
    args = parser.parse_args()
    runs = []
    for name, target, frame, fit_kwargs, sections in cases():
        per_seed = []
        for seed in [42] + list(range(1, args.seeds)):
            start = time.perf_counter()
            m = loopml.Model(target=target, **sections, training={"seed": seed}).fit(frame, progress=False, **fit_kwargs)
            test = m.metrics["test"]
            scores = {k: test[k] for k in KEYS if k in test}
            if "per_class" in test and name == "sms_spam":
                scores["spam_f1"] = test["per_class"]["spam"]["f1"]
            per_seed.append({"seed": seed, **scores, "epochs": m.info["training"]["epochs_run"],
                             "seconds": time.perf_counter() - start})
        summary = {k: {"seed42": per_seed[0][k], "mean": statistics.mean(r[k] for r in per_seed),
                       "std": statistics.pstdev(r[k] for r in per_seed)}
                   for k in per_seed[0] if k not in ("seed", "epochs", "seconds")}
        runs.append({"dataset": name, "test_rows": m.info["data_report"]["sizes"]["test"], "summary": summary,
                     "per_seed": per_seed})
        shown = ", ".join(f"{k} {v['seed42']:.4f} (mean {v['mean']:.4f} ± {v['std']:.4f})" for k, v in summary.items())
        print(f"{name}: {shown}", flush=True)
    print("results:", write_result("accuracy", {"seeds": args.seeds, "runs": runs}))


if __name__ == "__main__":
    main()
