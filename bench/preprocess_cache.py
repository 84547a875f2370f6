"""Preprocessing cold (read, infer, split, fit tokenizers/vocabularies, transform) vs a cache hit.

    python -m bench.preprocess_cache
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import realdata  # noqa: E402
from bench.common import write_result  # noqa: E402
from loopml.config import load_config  # noqa: E402
from loopml.prepare import prepare  # noqa: E402

CASES = [  # (dataset folder, file, config) -- files, as `loopml train --data FILE` reads them
    ("adult", "adult/adult.data", {"target": "income", "data": {"header": False, "names": realdata.ADULT_COLUMNS}}),
    ("sms_spam", "sms_spam/SMSSpamCollection",
     {"target": "label", "data": {"delimiter": "\t", "header": False, "names": ["label", "text"], "quoting": False}}),
    ("ag_news_test", "ag_news_test/test.csv",
     {"target": "label", "data": {"header": False, "names": ["label", "title", "description"]}}),
    ("california_housing", "california_housing/housing.csv", {"target": "median_house_value"}),
]


def main(repeats: int = 3) -> None:
    runs = []
    for folder, file, raw in CASES:
        if not realdata.available(folder):
            continue
        config = load_config(raw)
        cold, warm = [], []
        for _ in range(repeats):
            with tempfile.TemporaryDirectory() as cache:
                first = prepare(config, realdata.ROOT / file, cache_dir=Path(cache))
                second = prepare(config, realdata.ROOT / file, cache_dir=Path(cache))
            assert first.report["cache"] == "miss" and second.report["cache"] == "hit"
            cold.append(first.report["prepare_seconds"])
            warm.append(second.report["prepare_seconds"])
        c, w = statistics.median(cold), statistics.median(warm)
        runs.append({"dataset": folder, "rows": first.report["split"]["rows"], "cold_s": cold, "cached_s": warm,
                     "median_cold_s": c, "median_cached_s": w, "speedup": c / w})
        print(f"{folder}: cold {c:.3f}s, cached {w:.3f}s -> {c / w:.1f}x faster")
    print("results:", write_result("preprocess_cache", {"runs": runs}))


if __name__ == "__main__":
    main()
