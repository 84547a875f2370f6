"""Prometheus metrics of one server (its own registry, so tests and workers never share state).

With several worker processes (``loopml serve --workers N``) every worker writes its values to
files in ``PROMETHEUS_MULTIPROC_DIR`` (a private temporary folder per server, see ``multiprocess_dir``)
and ``/metrics`` aggregates them all: counters and histograms are summed over workers, gauges say how
(``multiprocess_mode``), so a scrape that lands on any worker reports the whole server.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


@contextmanager
def multiprocess_dir() -> Iterator[str]:
    """A fresh private folder for the workers' metric files, set in the environment they inherit,
    removed afterwards (stale files of an earlier server would be counted again)."""
    folder = tempfile.mkdtemp(prefix="loopml-metrics-")
    before = os.environ.get(MULTIPROC_ENV)
    os.environ[MULTIPROC_ENV] = folder
    try:
        yield folder
    finally:
        if before is None:
            os.environ.pop(MULTIPROC_ENV, None)
        else:
            os.environ[MULTIPROC_ENV] = before
        shutil.rmtree(folder, ignore_errors=True)


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("loopml_requests", "HTTP requests", ["route", "status"], registry=r)
        self.latency = Histogram("loopml_request_seconds", "HTTP request latency", ["route", "status"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("loopml_batch_size", "Rows per inference batch", buckets=BATCH_BUCKETS, registry=r)
        # gauges across workers: queues add up; what every worker reports alike (version, drift) is the latest
        self.queue_depth = Gauge("loopml_queue_depth", "Rows waiting for inference", registry=r,
                                 multiprocess_mode="livesum")
        self.model_version = Gauge("loopml_model_version", "Version being served", ["model"], registry=r,
                                   multiprocess_mode="livemostrecent")
        self.feedback = Counter("loopml_feedback", "Feedback labels stored", ["model"], registry=r)
        self.predictions = Counter("loopml_predictions", "Predictions made", ["model"], registry=r)
        self.swaps = Counter("loopml_model_swaps", "Hot swaps to a new version", ["model"], registry=r)
        self.load_failures = Counter("loopml_model_load_failures", "Versions the alias pointed at that failed to load",
                                     ["model"], registry=r)
        self.failed_version = Gauge("loopml_model_failed_version",
                                    "The version that last failed to load (0 = none since the last good swap)",
                                    ["model"], registry=r, multiprocess_mode="livemostrecent")
        self.drift_psi = Gauge("loopml_drift_psi", "Population stability index of the last monitoring window",
                               ["model", "column"], registry=r, multiprocess_mode="livemostrecent")
        self.drift = Gauge("loopml_drift", "1 when the last monitoring window flagged drift", ["model"], registry=r,
                           multiprocess_mode="livemostrecent")
        self.live_accuracy = Gauge("loopml_live_accuracy", "Accuracy on feedback in the last monitoring window", ["model"],
                                   registry=r, multiprocess_mode="livemostrecent")
        self.log_queue = Gauge("loopml_prediction_log_queue", "Prediction rows not yet in the store", registry=r,
                               multiprocess_mode="livesum")
        # the prediction log's health (predlog.py)
        self.log_refused = Counter("loopml_prediction_log_refused_requests",
                                   "Predict requests refused (503): the prediction log is unavailable", registry=r)
        self.log_rejected = Counter("loopml_prediction_log_rejected", "Prediction rows the store refused (kept aside)",
                                    registry=r)
        self.log_write_failures = Counter("loopml_prediction_log_write_failures", "Failed prediction-log store writes",
                                          registry=r)
        self.log_degraded = Gauge("loopml_prediction_log_degraded", "1 while prediction-log store writes are failing",
                                  registry=r, multiprocess_mode="livemax")
        self.log_pruned = Counter("loopml_prediction_log_pruned", "Prediction rows deleted by --log-retention", registry=r)
        # the unattended loop (`loopml loop`), read from the store by the monitoring task: counts, not this server's events
        self.loop_cycles = Gauge("loopml_loop_cycles", "Cycles the loop worker has run", ["model"], registry=r,
                                 multiprocess_mode="livemostrecent")
        self.loop_last_cycle = Gauge("loopml_loop_last_cycle_timestamp_seconds", "When the loop's last cycle ended",
                                     ["model"], registry=r, multiprocess_mode="livemostrecent")
        self.loop_next_cycle = Gauge("loopml_loop_next_cycle_timestamp_seconds", "When the loop's next cycle is due",
                                     ["model"], registry=r, multiprocess_mode="livemostrecent")
        self.loop_worker_up = Gauge("loopml_loop_worker_up", "1 while a live loop worker holds the model's loop lock",
                                    ["model"], registry=r, multiprocess_mode="livemostrecent")
        self.decisions = Gauge("loopml_decisions_total", "Decisions recorded in the store", ["model", "kind", "outcome"],
                               registry=r, multiprocess_mode="livemostrecent")
        self.rollout_version = Gauge("loopml_rollout_candidate_version",
                                     "Version on trial (shadow/canary) or under watch; 0 when none", ["model", "mode", "state"],
                                     registry=r, multiprocess_mode="livemostrecent")
        self.rollout_labels = Gauge("loopml_rollout_candidate_labels", "Live labels on that version's own predictions so far",
                                    ["model", "mode", "state"], registry=r, multiprocess_mode="livemostrecent")

    def observe_batch(self, rows: int, queued: int) -> None:
        self.batch_size.observe(rows)
        self.queue_depth.set(queued)

    def render(self) -> bytes:
        if not multiprocess():
            return generate_latest(self.registry)
        from prometheus_client import multiprocess as mp

        aggregated = CollectorRegistry()
        mp.MultiProcessCollector(aggregated)
        return generate_latest(aggregated)

    def close(self) -> None:
        """This worker is stopping: its live gauges leave the aggregate."""
        if multiprocess():
            from prometheus_client import multiprocess as mp

            mp.mark_process_dead(os.getpid())

    def observe_loop(self, model: str, status: dict) -> None:
        """``status``: ``loopml.loop.worker.loop_status``."""
        row = status.get("state") or {}
        self.loop_cycles.labels(model).set(row.get("cycles") or 0)
        self.loop_last_cycle.labels(model).set(row.get("last_cycle_at") or 0)
        self.loop_next_cycle.labels(model).set(row.get("next_cycle_at") or 0)
        self.loop_worker_up.labels(model).set(1.0 if status.get("worker") else 0.0)
        for (kind, outcome), count in status.get("decisions", {}).items():
            self.decisions.labels(model, kind, outcome).set(count)
        for state in ("trial", "watching"):  # one series per state, set to 0 when nothing is in it
            active = [r for r in status.get("rollouts", []) if r["state"] == state]
            for mode in ("shadow", "canary", "direct"):
                here = [r for r in active if r["mode"] == mode]
                self.rollout_version.labels(model, mode, state).set(here[-1]["candidate_version"] if here else 0)
                labels = (here[-1].get("numbers") or {}).get("candidate_labels", 0) if here else 0
                self.rollout_labels.labels(model, mode, state).set(labels or 0)

    def observe_drift(self, model: str, result: dict) -> None:
        columns = dict(result.get("columns", {}))
        if "predictions" in result:
            columns["(predictions)"] = result["predictions"]
        for column, d in columns.items():
            self.drift_psi.labels(model, column).set(d["psi"])
        self.drift.labels(model).set(1.0 if result.get("drift") else 0.0)
        if result.get("live", {}).get("accuracy") is not None:
            self.live_accuracy.labels(model).set(result["live"]["accuracy"])
