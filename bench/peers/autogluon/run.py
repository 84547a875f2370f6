"""Fit AutoGluon on one train file for a time limit and predict the test file (used by bench/automl.py).

Runs inside AutoGluon's own virtualenv (bench/peers/autogluon/install.sh), never loopml's; it imports
nothing from loopml. Default presets, default eval metric, AutoGluon's own thread settings.

    python run.py --train train.parquet --test test.parquet --label income --problem-type binary \
        --time-limit 120 --workdir /tmp/ag --out result.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--train", required=True)
    parser.add_argument("--test", required=True)
    parser.add_argument("--label", required=True)
    parser.add_argument("--problem-type", required=True, choices=["binary", "multiclass", "regression"])
    parser.add_argument("--time-limit", type=float, required=True)
    parser.add_argument("--workdir", required=True, help="AutoGluon's model folder (deleted by the caller)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--num-cpus", type=int, default=None, help="cores AutoGluon may use (default: its own choice)")
    args = parser.parse_args()

    start = time.perf_counter()
    import autogluon.tabular
    import pandas as pd
    from autogluon.tabular import TabularPredictor

    imported = time.perf_counter()
    train = pd.read_parquet(args.train)
    test = pd.read_parquet(args.test)
    predictor = TabularPredictor(label=args.label, problem_type=args.problem_type, path=args.workdir, verbosity=1)
    fit_start = time.perf_counter()
    predictor.fit(train, time_limit=args.time_limit, **({"num_cpus": args.num_cpus} if args.num_cpus else {}))
    fit_s = time.perf_counter() - fit_start
    features = test.drop(columns=[args.label])
    predict_start = time.perf_counter()
    pred = predictor.predict(features)
    proba = predictor.predict_proba(features) if args.problem_type != "regression" else None
    predict_s = time.perf_counter() - predict_start
    board = predictor.leaderboard(silent=True)
    keep = [c for c in ("model", "score_val", "fit_time", "pred_time_val") if c in board.columns]
    out = {
        "tool": "autogluon",
        "version": autogluon.tabular.__version__,
        "presets": "default (medium_quality)",
        "eval_metric": predictor.eval_metric.name,
        "num_cpus": args.num_cpus or "auto",
        "import_s": imported - start,
        "fit_s": fit_s,
        "predict_s": predict_s,
        "best_model": predictor.model_best,
        "leaderboard": json.loads(board[keep].head(12).to_json(orient="records")),
        "pred": pred.tolist(),
        "proba": None if proba is None else {str(c): proba[c].tolist() for c in proba.columns},
    }
    Path(args.out).write_text(json.dumps(out))


if __name__ == "__main__":
    main()
