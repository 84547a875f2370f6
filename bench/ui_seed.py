"""A store full of realistic rows for the dashboard's benchmark, screenshots and browser tests.

    from bench.ui_seed import seed
    facts = seed("sqlite:////tmp/ui/registry.db", "/tmp/ui/artifacts", runs=10_000, versions=1_000,
                 predictions=1_000_000)

One REAL small model (``tiny``: a loopml network trained on 200 rows, tracked, saved with its report,
registered twice — v1 @production, v2 @staging — so the model page, its report link and the labelling
queue load a real version) and, around it, synthetic rows bulk-inserted with SQLAlchemy Core in
chunks of 10k straight into the tables of ``loopml.registry.db`` (after ``Store`` created the schema):
runs with params/metrics and a learning curve each, registered models with versions, aliases and alias
events, the prediction log of ``tiny`` spread over 30 days (inputs/outputs JSON), feedback for some of
it, drift windows computed by the monitoring code on synthetic windows, and gate decisions.

``postgres_database(admin_url)`` makes a throwaway database on a PostgreSQL server (dropped after).
"""

from __future__ import annotations

import contextlib
import copy
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import sqlalchemy as sa

from loopml.registry import Store, db
from loopml.registry.store import metric_values

CHUNK = 10_000
KINDS = ("alpha", "beta", "gamma")
WORDS = ("good", "bad", "fine", "awful", "great", "poor", "okay")
EXPERIMENTS = ("churn", "income", "fraud", "reviews", "tiny", "housing", "credit", "spam")
MODEL = "tiny"
DAYS = 30


def frame(n: int, seed: int = 0, shift: float = 0.0):
    """The tiny model's table: two numbers, a category, a short text, a binary label."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    a, b = rng.normal(loc=shift, size=n), rng.normal(size=n)
    kind = rng.choice(KINDS, size=n, p=[0.5 - shift / 4, 0.3, 0.2 + shift / 4] if 0 <= shift <= 1 else None)
    notes = [f"item {i % 9} looks {WORDS[j]}" for i, j in enumerate(rng.integers(0, len(WORDS), size=n))]
    return pd.DataFrame({"a": a, "b": b, "kind": kind, "note": notes,
                         "label": np.where(a - b + (kind == "alpha") * 0.5 > 0, "pos", "neg")})


def real_model(store: Store, epochs: int = 4, versions: int = 2) -> dict:
    """Train, save (report included), register ``versions`` times and promote ``tiny``; its facts."""
    import loopml

    model = loopml.Model(target="label", training={"epochs": epochs}).fit(
        frame(200, 0), progress=False, cache_dir=False, track=MODEL, store=store)
    with tempfile.TemporaryDirectory() as tmp:
        model.save(Path(tmp) / "model", report=True)  # tracked: the artifact (report too) goes to the store
    first = store.register(MODEL, run=model.run_id, description="first tiny model")
    store.promote(MODEL, first["version"], "production", reason="first version", actor="seed")
    numbers = [first["version"]]
    for _ in range(versions - 1):
        again = store.register(MODEL, run=model.run_id, parent_version=numbers[-1], description="retrained",
                               lineage={"reason": "drift", "parent_version": numbers[-1], "start": "warm"})
        numbers.append(again["version"])
    if len(numbers) > 1:
        store.promote(MODEL, numbers[-1], "staging", reason="candidate under review", actor="seed")
    return {"model": model, "run_id": model.run_id, "artifact_uri": first["artifact_uri"], "versions": numbers,
            "metrics": first["metrics"]}


def _insert(c, table: sa.Table, rows: list[dict]) -> None:
    for lo in range(0, len(rows), CHUNK):
        c.execute(table.insert(), rows[lo:lo + CHUNK])


def _hex_ids(rng: np.random.Generator, n: int) -> list[str]:
    hi, lo = rng.integers(0, 2**63, size=n), rng.integers(0, 2**63, size=n)
    return [f"{x:016x}{y:016x}" for x, y in zip(hi.tolist(), lo.tolist(), strict=True)]


def _runs(c, rng, n: int, template: dict, now: float) -> list[str]:
    """``n`` runs over ``DAYS`` days, each with params, metrics and a 5-epoch learning curve."""
    ids = _hex_ids(rng, n)
    started = np.sort(now - rng.uniform(0, DAYS * 86400, size=n))
    statuses = rng.choice(["finished", "failed", "killed", "running"], size=n, p=[0.9, 0.05, 0.03, 0.02])
    lrs = rng.choice([1e-4, 3e-4, 1e-3, 3e-3, 1e-2], size=n)
    skill = rng.uniform(0.6, 0.95, size=n)
    rows, curve, values = [], [], []
    for i, run_id in enumerate(ids):
        params = copy.deepcopy(template["params"])
        params["training"]["optimizer"]["lr"] = float(lrs[i])
        params["training"]["epochs"] = 5
        params["combiner"]["layers"] = [int(rng.choice([32, 64, 128]))]
        status, duration = str(statuses[i]), float(rng.uniform(2, 600))
        metrics = None
        if status == "finished":
            acc = float(skill[i])
            metrics = {split: {"accuracy": acc + d, "f1": acc - 0.02 + d, "log_loss": 1.2 - acc + d,
                               "roc_auc": min(acc + 0.08, 1)}
                       for split, d in (("validation", 0.0), ("test", float(rng.normal(scale=0.01))))}
        rows.append({"id": run_id, "experiment": EXPERIMENTS[i % len(EXPERIMENTS)], "status": status,
                     "started_at": float(started[i]), "ended_at": None if status == "running" else float(started[i]) + duration,
                     "params": params, "metrics": metrics, "data_fingerprint": f"{i % 97:016x}", "code_version": "0.1.0",
                     "git_commit": template["git_commit"], "host": "bench", "pid": 1000 + i % 5000,
                     "duration": None if status == "running" else duration, "artifact_uri": template["artifact_uri"],
                     "error": "RuntimeError: out of memory" if status == "failed" else None})
        values += metric_values(run_id, metrics)  # what Store.end_run writes with the metrics
        for step in range(5):
            loss = 0.7 * (1 - skill[i]) + 0.3 * np.exp(-step / 2)
            curve += [{"run_id": run_id, "step": step, "key": "train_loss", "value": float(loss)},
                      {"run_id": run_id, "step": step, "key": "val_loss", "value": float(loss * 1.1)},
                      {"run_id": run_id, "step": step, "key": "val_accuracy", "value": float(skill[i] * (1 - np.exp(-step - 1)))}]
    _insert(c, db.runs, rows)
    _insert(c, db.run_metrics, curve)
    _insert(c, db.run_metric_values, values)
    return ids


def _models(c, rng, n_versions: int, run_ids: list[str], real: dict, now: float) -> dict:
    """``n_versions`` versions: half of them in ``churn``, the rest over 19 more models; aliases, events, decisions."""
    stems = [e for e in EXPERIMENTS if e != MODEL]
    names = ["churn"] + [f"{stems[i % len(stems)]}-{i:02d}" for i in range(1, 20)]
    counts = [n_versions // 2] + [0] * 19
    for i in range(n_versions - counts[0]):
        counts[1 + i % 19] += 1
    models, versions, aliases, events, decisions = [], [], [], [], []
    k = 0
    for name, count in zip(names, counts, strict=True):
        if not count:
            continue
        created = now - DAYS * 86400
        models.append({"name": name, "created_at": created, "latest_version": count, "description": f"the {name} model"})
        production = None
        for v in range(1, count + 1):
            at = created + v * (DAYS * 86400 / (count + 1))
            acc = float(0.7 + 0.2 * v / count + rng.normal(scale=0.01))
            versions.append({"name": name, "version": v, "run_id": run_ids[k % len(run_ids)],
                             "artifact_uri": real["artifact_uri"],
                             "metrics": {"validation": {"accuracy": acc, "f1": acc - 0.02},
                                         "test": {"accuracy": acc - 0.005, "f1": acc - 0.03}},
                             "parent_version": v - 1 if v > 1 else None, "data_fingerprint": f"{v:016x}",
                             "config_hash": f"{k:016x}", "created_at": at, "description": f"retrained ({v})",
                             "lineage": {"reason": "drift" if v % 2 else "schedule", "parent_version": v - 1 if v > 1 else None,
                                         "start": "warm", "learner": "network", "training_rows": 1000 + 10 * v}})
            k += 1
            promoted = v == 1 or rng.random() < 0.3
            if v > 1:
                decisions.append({"model_name": name, "candidate_version": v, "champion_version": production,
                                  "promoted": promoted, "kind": "retrain", "at": at,
                                  "reason": f"accuracy on held-back feedback {acc - 0.01:.4f} → {acc:.4f} (p=0.012)" if promoted
                                  else "gain +0.0012 < margin 0.005",
                                  "numbers": {"metric": "accuracy", "window_rows": 200, "test_rows": 400,
                                              "champion_window": acc - 0.01, "candidate_window": acc,
                                              "champion_test": acc - 0.01, "candidate_test": acc,
                                              "only_candidate_right": 14, "only_champion_right": 4, "mcnemar_p": 0.012}})
            if promoted:
                events.append({"name": name, "alias": "production", "action": "promote", "from_version": production,
                               "to_version": v, "actor": "loop-worker" if v > 1 else "alice", "at": at,
                               "reason": "gate passed" if v > 1 else "first version"})
                production = v
        aliases += [{"name": name, "alias": "production", "version": production, "updated_at": now},
                    {"name": name, "alias": "staging", "version": count, "updated_at": now}]
    _insert(c, db.registered_models, models)
    _insert(c, db.model_versions, versions)
    _insert(c, db.aliases, aliases)
    _insert(c, db.alias_events, events)
    _insert(c, db.gate_decisions, decisions)
    return {"models": [n for n, x in zip(names, counts, strict=True) if x], "big_model": "churn",
            "big_model_versions": counts[0], "versions": len(versions)}


def _bulk(c, table: sa.Table, columns: tuple[str, ...], rows: list[tuple]) -> None:
    """One driver-level executemany (JSON columns given as JSON text): the fast path for the big tables."""
    if c.dialect.name == "postgresql":  # COPY: several times faster than an executemany
        with c.connection.driver_connection.cursor() as cursor, \
                cursor.copy(f"COPY {table.name} ({', '.join(columns)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        return
    mark = "?" if c.dialect.paramstyle == "qmark" else "%s"
    c.exec_driver_sql(f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({', '.join([mark] * len(columns))})", rows)


PREDICTION_COLUMNS = ("id", "model_name", "model_version", "created_at", "inputs", "outputs", "latency_ms", "served",
                      "shadow_of")
FEEDBACK_COLUMNS = ("model_name", "prediction_id", "inputs", "label", "created_at", "prediction_outputs", "model_version")


def _predictions(c, rng, n: int, versions: list[int], now: float, feedback_every: int = 100) -> dict:
    """The prediction log of ``tiny`` (``n`` rows over ``DAYS`` days) and feedback for every ``feedback_every``-th.

    Ids are time-ordered (microseconds, then random bits) so the primary key index grows at its end."""
    done, labelled = 0, 0
    span = DAYS * 86400
    while done < n:
        m = min(CHUNK, n - done)
        at = now - span + (done + np.arange(m) + rng.uniform(0, 1, size=m)) * (span / n)
        ids = [f"{t:016x}{r:016x}" for t, r in zip((at * 1e6).astype(np.int64).tolist(),
                                                   rng.integers(0, 2**63, size=m).tolist(), strict=True)]
        shift = (done + np.arange(m)) / n  # the traffic drifts over the month
        a, b = rng.normal(loc=shift, size=m), rng.normal(size=m)
        kind = rng.integers(0, 3, size=m)
        word, item = rng.integers(0, len(WORDS), size=m), rng.integers(0, 9, size=m)
        p_pos = 1 / (1 + np.exp(-2 * (a - b)))
        version = np.where(shift < 0.5, versions[0], versions[-1]).tolist()
        truth = np.where(a - b + (kind == 0) * 0.5 > 0, "pos", "neg").tolist()
        rows, fb = [], []
        for i, (x, y, k, w, it, p, t, v) in enumerate(zip(a.tolist(), b.tolist(), kind.tolist(), word.tolist(), item.tolist(),
                                                         p_pos.tolist(), at.tolist(), version, strict=True)):
            inputs = f'{{"a": {x!r}, "b": {y!r}, "kind": "{KINDS[k]}", "note": "item {it} looks {WORDS[w]}"}}'
            outputs = f'{{"prediction": "{"pos" if p >= 0.5 else "neg"}", "probabilities": {{"neg": {1 - p!r}, "pos": {p!r}}}}}'
            rows.append((ids[i], MODEL, v, t, inputs, outputs, 2.0 + p, True, None))
            if (done + i) % feedback_every == feedback_every - 1 and t < now - 3600:  # the last hour: still queued
                fb.append((MODEL, ids[i], inputs, f'"{truth[i]}"', t + 600, outputs, v))
        _bulk(c, db.predictions, PREDICTION_COLUMNS, rows)
        if fb:
            _bulk(c, db.feedback, FEEDBACK_COLUMNS, fb)
        done, labelled = done + m, labelled + len(fb)
    return {"predictions": n, "feedback": labelled}


def _drift_windows(c, model, version: int, now: float, windows: int) -> int:
    """``windows`` windows over the month, each the monitoring code's result on a window drifting a little more."""
    from loopml.loop.drift import window_drift
    from loopml.loop.monitor import live_metrics

    test = model.metrics.get("test", {}).get("accuracy")
    step = DAYS * 86400 / max(windows, 1)
    rows = []
    for w in range(windows):
        data = frame(300, 100 + w, shift=w / max(windows - 1, 1))
        predicted = [str(p) for p in model.predict(data.drop(columns=["label"]))]  # the real model's answers
        result = window_drift(data.drop(columns=["label"]), predicted, model.reference)
        live = live_metrics([{"prediction_outputs": {"prediction": p}, "label": y}
                             for p, y in zip(predicted[:60], data["label"][:60], strict=True)], "category")
        if test is not None:
            live.update(test_accuracy=test, change=live["accuracy"] - test)
        start = now - DAYS * 86400 + w * step
        result.update(live=live, model=MODEL, version=version, start=start, end=start + step)
        rows.append({"model_name": MODEL, "model_version": version, "start": start, "end": start + step,
                     "rows": result["rows"], "drift": bool(result["drift"]), "results": result, "created_at": start + step})
    _insert(c, db.drift_windows, rows)
    return len(rows)


def _tiny_decisions(c, champion: int, candidate: int, now: float) -> None:
    rows = [
        {"model_name": MODEL, "candidate_version": None, "champion_version": champion, "promoted": False, "kind": "retrain",
         "reason": "not enough feedback: 12 labelled rows, 2 to hold back (< 20)", "at": now - 5 * 86400,
         "numbers": {"feedback_rows": 12, "feedback_skipped": {}, "feedback_skipped_total": 0, "feedback_relabelled": 0}},
        {"model_name": MODEL, "candidate_version": candidate, "champion_version": champion, "promoted": False, "kind": "retrain",
         "reason": "gain +0.0150 on held-back feedback is not significant (McNemar p=0.210)", "at": now - 2 * 86400,
         "numbers": {"metric": "accuracy", "window_rows": 40, "test_rows": 40, "champion_window": 0.80,
                     "candidate_window": 0.815, "champion_test": 0.8, "candidate_test": 0.8, "only_candidate_right": 3,
                     "only_champion_right": 1, "mcnemar_p": 0.21, "train_seconds": 4.2, "learned_rows": 160}},
        {"model_name": MODEL, "candidate_version": None, "champion_version": champion, "promoted": False, "kind": "loop",
         "reason": "drift in 2 columns (a, kind): retrain queued", "at": now - 86400,
         "numbers": {"drifted": ["a", "kind"], "window_rows": 1000}},
    ]
    _insert(c, db.gate_decisions, rows)


def seed(store_url: str, artifacts: str, runs: int = 10_000, versions: int = 1_000, predictions: int = 1_000_000,
         seed: int = 0, drift_windows: int = 48, epochs: int = 4, xss: bool = True) -> dict:
    """Fill an empty store; the facts a benchmark or test needs (ids, names, counts, seconds per part)."""
    rng = np.random.default_rng(seed)
    store = Store(store_url, artifacts)
    _ = store.artifacts  # creates the schema and records the artifact root
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    real = real_model(store, epochs=epochs)
    seconds["real_model"] = time.perf_counter() - started
    template = store.get_run(real["run_id"])
    now = time.time()
    with store.writer.begin() as c:
        t = time.perf_counter()
        run_ids = _runs(c, rng, runs, template, now) if runs else []
        seconds["runs"] = time.perf_counter() - t
        t = time.perf_counter()
        models = _models(c, rng, versions, run_ids or [real["run_id"]], real, now) if versions else {"models": [], "versions": 0}
        seconds["versions"] = time.perf_counter() - t
        t = time.perf_counter()
        logged = _predictions(c, rng, predictions, real["versions"], now) if predictions else {"predictions": 0, "feedback": 0}
        seconds["predictions"] = time.perf_counter() - t
        t = time.perf_counter()
        windows = _drift_windows(c, real["model"], real["versions"][0], now, drift_windows)
        _tiny_decisions(c, real["versions"][0], real["versions"][-1], now)
        seconds["windows_decisions"] = time.perf_counter() - t
    xss_id = None
    if xss:  # a logged input that tries to run script: every page must show it as text
        xss_id = uuid.uuid4().hex
        store.log_predictions([{
            "id": xss_id, "model_name": MODEL, "model_version": real["versions"][0], "created_at": time.time(),
            "inputs": {"a": 0.01, "b": 0.0, "kind": "alpha", "note": "<script>window.__xss=1</script>"},
            "outputs": {"prediction": "pos", "probabilities": {"neg": 0.49, "pos": 0.51}}, "latency_ms": 1.0}])
    seconds["total"] = time.perf_counter() - started
    store.engine.dispose()
    return {"store": store.url, "model": MODEL, "model_versions": real["versions"], "real_run": real["run_id"],
            "runs": [real["run_id"], *run_ids[:3]], "run_count": runs + 1, "models": [MODEL, *models["models"]],
            "big_model": models.get("big_model"), "big_model_versions": models.get("big_model_versions"),
            "versions": models["versions"] + len(real["versions"]),
            "predictions": logged["predictions"] + (1 if xss else 0), "feedback": logged["feedback"],
            "drift_windows": windows, "xss_prediction": xss_id, "seconds": {k: round(v, 2) for k, v in seconds.items()}}


@contextlib.contextmanager
def postgres_database(admin_url: str = "postgresql://postgres@127.0.0.1:5432/test",
                      prefix: str = "loopml_uibench") -> Iterator[str]:
    """A fresh database on that server for the block (its URL), dropped after."""
    url = sa.engine.make_url(admin_url)
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
