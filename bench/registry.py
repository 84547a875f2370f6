"""Registry latency: registering versions and resolving NAME@production, at 1 and at 1,000 versions,
on SQLite (the default) and on the local PostgreSQL server.

    python -m bench.registry [--versions 1000] [--postgres postgresql://postgres@127.0.0.1:5432/test]

Each store starts empty. The baseline is the same operation on the same store when it held one
version, measured in the same run; the ratio shows how the cost grows with the registry.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import sqlalchemy as sa  # noqa: E402

import loopml  # noqa: E402
from bench.common import write_result  # noqa: E402
from loopml.registry import Store  # noqa: E402


def _model_dir(root: Path) -> Path:
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"a": rng.normal(size=200), "y": rng.choice(["p", "n"], size=200)})
    return loopml.Model(target="y", training={"epochs": 1}).fit(df, progress=False, cache_dir=False).save(root / "m")


def _ms(samples: list[float]) -> dict:
    values = np.array(samples) * 1000
    return {"p50_ms": float(np.percentile(values, 50)), "p95_ms": float(np.percentile(values, 95)),
            "mean_ms": float(values.mean())}


def _resolve(store: Store, n: int = 200) -> list[float]:
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        store.resolve("bench@production")
        samples.append(time.perf_counter() - start)
    return samples


def measure(url: str, artifacts: Path, model_dir: Path, versions: int) -> dict:
    store = Store(url, str(artifacts))
    timings = []
    for i in range(versions):
        start = time.perf_counter()
        store.register("bench", path=model_dir, description=f"v{i + 1}")
        timings.append(time.perf_counter() - start)
        if i == 0:
            store.promote("bench", 1)
            resolve_at_1 = _ms(_resolve(store))
            promote_at_1 = time.perf_counter()
            store.promote("bench", 1, reason="timing")
            promote_at_1 = time.perf_counter() - promote_at_1
    store.promote("bench", versions)
    resolve_at_n = _ms(_resolve(store))
    start = time.perf_counter()
    store.promote("bench", versions - 1, reason="timing")
    promote_at_n = time.perf_counter() - start
    start = time.perf_counter()
    loopml.load("bench@production", store=url)
    load_seconds = time.perf_counter() - start
    result = {
        "register_first_10": _ms(timings[:10]), "register_last_100": _ms(timings[-100:]),
        "resolve_at_1_version": resolve_at_1, f"resolve_at_{versions}_versions": resolve_at_n,
        "resolve_ratio_n_vs_1": resolve_at_n["p50_ms"] / resolve_at_1["p50_ms"],
        "register_ratio_last_vs_first": statistics.median(timings[-100:]) / statistics.median(timings[:10]),
        "promote_ms_at_1": promote_at_1 * 1000, f"promote_ms_at_{versions}": promote_at_n * 1000,
        "load_by_alias_seconds": load_seconds,
    }
    store.engine.dispose()
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--versions", type=int, default=1000)
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    results = {"versions": args.versions}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = _model_dir(tmp)
        results["sqlite"] = measure(f"sqlite:///{tmp / 'registry.db'}", tmp / "artifacts", model_dir, args.versions)
        if args.postgres:
            schema = f"bench_{uuid.uuid4().hex[:10]}"
            admin = sa.create_engine(args.postgres.replace("postgresql://", "postgresql+psycopg://", 1))
            with admin.begin() as c:
                c.execute(sa.text(f"CREATE SCHEMA {schema}"))
            url = sa.engine.make_url(args.postgres).update_query_dict({"options": f"-csearch_path={schema}"})
            try:
                results["postgresql"] = measure(url.render_as_string(hide_password=False), tmp / "pg-artifacts",
                                                model_dir, args.versions)
            finally:
                with admin.begin() as c:
                    c.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
    for backend in ("sqlite", "postgresql"):
        if backend in results:
            r = results[backend]
            print(f"{backend}: register p50 {r['register_first_10']['p50_ms']:.2f} ms (first 10) / "
                  f"{r['register_last_100']['p50_ms']:.2f} ms (last 100); resolve NAME@production p50 "
                  f"{r['resolve_at_1_version']['p50_ms']:.2f} ms at 1 version / "
                  f"{r[f'resolve_at_{args.versions}_versions']['p50_ms']:.2f} ms at {args.versions} "
                  f"(×{r['resolve_ratio_n_vs_1']:.2f}); load by alias {r['load_by_alias_seconds'] * 1000:.0f} ms")
    print(f"written {write_result('registry', results)}")


if __name__ == "__main__":
    main()
