"""Prometheus metrics of one server (its own registry, so tests and workers never share state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("loopml_requests", "HTTP requests", ["route", "status"], registry=self.registry)
        self.latency = Histogram("loopml_request_seconds", "HTTP request latency", ["route", "status"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("loopml_batch_size", "Rows per inference batch", buckets=BATCH_BUCKETS,
                                    registry=self.registry)
        self.queue_depth = Gauge("loopml_queue_depth", "Rows waiting for inference", registry=self.registry)
        self.model_version = Gauge("loopml_model_version", "Version being served", ["model"], registry=self.registry)
        self.feedback = Counter("loopml_feedback", "Feedback labels stored", ["model"], registry=self.registry)
        self.predictions = Counter("loopml_predictions", "Predictions made", ["model"], registry=self.registry)
        self.swaps = Counter("loopml_model_swaps", "Hot swaps to a new version", ["model"], registry=self.registry)
        self.drift_psi = Gauge("loopml_drift_psi", "Population stability index of the last monitoring window",
                               ["model", "column"], registry=self.registry)
        self.drift = Gauge("loopml_drift", "1 when the last monitoring window flagged drift", ["model"], registry=self.registry)
        self.live_accuracy = Gauge("loopml_live_accuracy", "Accuracy on feedback in the last monitoring window", ["model"],
                                   registry=self.registry)
        self.log_queue = Gauge("loopml_prediction_log_queue", "Prediction rows not yet in the store",
                               registry=self.registry)

    def observe_batch(self, rows: int, queued: int) -> None:
        self.batch_size.observe(rows)
        self.queue_depth.set(queued)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def observe_drift(self, model: str, result: dict) -> None:
        columns = dict(result.get("columns", {}))
        if "predictions" in result:
            columns["(predictions)"] = result["predictions"]
        for column, d in columns.items():
            self.drift_psi.labels(model, column).set(d["psi"])
        self.drift.labels(model).set(1.0 if result.get("drift") else 0.0)
        if result.get("live", {}).get("accuracy") is not None:
            self.live_accuracy.labels(model).set(result["live"]["accuracy"])
