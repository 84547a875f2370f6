"""Cost of canonical keys: category/binary fit and transform, and the served JSON -> frame -> tensor path,
against the str()-keyed lookup loopml used before (the same loop without ``canonical_key``).

    python -m bench.feature_keys            # 200k rows, batches of 1 and 200 records
    python -m bench.feature_keys --rows 20000
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import write_result  # noqa: E402
from loopml.config import feature_config  # noqa: E402
from loopml.features import FEATURE_TYPES  # noqa: E402
from loopml.features.base import canonical_keys  # noqa: E402
from loopml.features.pipeline import records_frame  # noqa: E402


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _str_keys(column: pd.Series) -> list:
    return [None if (v is None or v != v) else str(v).strip() for v in column.tolist()]


def main(rows: int = 200_000, repeats: int = 5) -> dict:
    rng = np.random.default_rng(0)
    ints = pd.Series(rng.integers(0, 50, rows).astype(np.float64))
    ints[rng.random(rows) < 0.05] = np.nan  # read from a CSV with gaps: floats
    words = pd.Series(rng.choice([f"city_{i}" for i in range(300)], rows), dtype=object)
    results: dict = {"rows": rows, "columns": {}}
    for name, col in (("integers with gaps", ints), ("strings", words)):
        feature = FEATURE_TYPES.get("category")("c", feature_config("category"))
        fit_s = _best(lambda col=col, feature=feature: feature.fit(col), repeats)
        transform_s = _best(lambda col=col, feature=feature: feature.transform(col), repeats)
        results["columns"][name] = {
            "category_fit_s": round(fit_s, 4), "category_transform_s": round(transform_s, 4),
            "canonical_keys_s": round(_best(lambda col=col: canonical_keys(col), repeats), 4),
            "str_keys_s (before)": round(_best(lambda col=col: _str_keys(col), repeats), 4),
        }
    feature = FEATURE_TYPES.get("category")("c", feature_config("category"))
    feature.fit(ints)
    served = {}
    for batch in (1, 200):
        records = [{"c": int(v) if v == v else None} for v in ints.iloc[:batch]]
        per = [_best(lambda records=records: feature.transform(records_frame(records, ["c"])["c"]), 50)
               for _ in range(3)]
        served[f"records_{batch}"] = {"frame_and_transform_us": round(statistics.median(per) * 1e6, 1)}
    results["served"] = served
    print(results)
    write_result("feature_keys", results)
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=200_000)
    args = parser.parse_args()
    main(args.rows)
