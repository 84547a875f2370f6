"""The training callback that records each epoch's logs in the store."""

from __future__ import annotations

from loopml.train.callbacks import Callback


class RunLogger(Callback):
    def __init__(self, store, run_id: str) -> None:
        self.store, self.run_id = store, run_id

    def on_train_begin(self, trainer) -> None:
        # a resumed run redoes the epochs after its last checkpoint: drop what they logged the first time
        self.store.forget_metrics_from(self.run_id, trainer.epoch)

    def on_epoch_end(self, trainer, logs: dict) -> None:
        self.store.log_metrics(self.run_id, int(logs["epoch"]), {k: v for k, v in logs.items() if k != "epoch"})
