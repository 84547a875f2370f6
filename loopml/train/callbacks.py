"""Callbacks: the tiny base class and the built-ins (history, early stopping, checkpoints, progress)."""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from loopml.evaluate.metrics import better
from loopml.train.state import save_state

if TYPE_CHECKING:
    from loopml.train.trainer import Trainer


class Callback:
    """Override what you need. ``state_dict``/``load_state_dict`` make a callback resumable."""

    def on_train_begin(self, trainer: Trainer) -> None: ...
    def on_epoch_begin(self, trainer: Trainer, epoch: int) -> None: ...
    def on_batch_end(self, trainer: Trainer, step: int, loss: float) -> None: ...
    def on_validation_begin(self, trainer: Trainer) -> None: ...
    def on_epoch_end(self, trainer: Trainer, logs: dict) -> None: ...
    def on_train_end(self, trainer: Trainer) -> None: ...
    def on_train_abort(self, trainer: Trainer) -> None: ...

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None: ...


class History(Callback):
    """Per-epoch logs as a list of plain dicts."""

    def __init__(self) -> None:
        self.epochs: list[dict] = []

    def on_epoch_end(self, trainer: Trainer, logs: dict) -> None:
        self.epochs.append(dict(logs))

    def state_dict(self) -> dict:
        return {"epochs": self.epochs}

    def load_state_dict(self, state: dict) -> None:
        self.epochs = list(state["epochs"])


class BestModel(Callback):
    """Keeps the weights of the best epoch by the monitored metric; restores them at the end.

    With ``patience > 0`` it also stops training after that many epochs without improvement.
    """

    def __init__(self, metric: str, patience: int = 0, min_delta: float = 0.0) -> None:
        self.metric, self.patience, self.min_delta = metric, patience, min_delta
        self.best: float | None = None
        self.best_epoch = -1
        self.wait = 0
        self.weights: dict | None = None

    def on_epoch_end(self, trainer: Trainer, logs: dict) -> None:
        value = logs[f"val_{self.metric}"]
        if better(self.metric, value, self.best, self.min_delta):
            self.best, self.best_epoch, self.wait = value, logs["epoch"], 0
            self.weights = copy.deepcopy(trainer.model.state_dict())
        else:
            self.wait += 1
            if self.patience and self.wait >= self.patience:
                trainer.stop_reason = f"early stopping: no val_{self.metric} improvement for {self.wait} epochs"

    def on_train_end(self, trainer: Trainer) -> None:
        if self.weights is not None:
            trainer.model.load_state_dict(self.weights)

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait, "weights": self.weights}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_epoch, self.wait = state["best"], state["best_epoch"], state["wait"]
        self.weights = state["weights"]


class Checkpoint(Callback):
    """After every epoch, writes everything needed to resume to ``directory/last.safetensors``."""

    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / "last.safetensors"

    def on_epoch_end(self, trainer: Trainer, logs: dict) -> None:
        save_state(trainer.state_dict(), self.path)  # the trainer runs checkpoints last


class ProgressBar(Callback):
    """A rich progress bar with the live loss and validation metric."""

    def __init__(self, metric: str) -> None:
        self.metric = metric
        self.progress = None

    def on_train_begin(self, trainer: Trainer) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        console = Console(file=sys.stderr)
        self.progress = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}  {task.fields[val]}"), TimeElapsedColumn(),
            console=console, transient=False, disable=not console.is_terminal,
        )
        self.progress.start()
        self._last_loss, self._last_val = 0.0, ""
        self.task = self.progress.add_task("train", total=trainer.steps_per_epoch, epoch=0, loss=0.0, val="")
        self.console = console

    def on_epoch_begin(self, trainer: Trainer, epoch: int) -> None:
        # reset() replaces every field, so all the columns' fields go with it (not just the epoch)
        self.progress.reset(self.task, total=trainer.steps_per_epoch, epoch=f"{epoch + 1}/{trainer.planned_epochs}",
                            loss=self._last_loss, val=self._last_val)

    def on_batch_end(self, trainer: Trainer, step: int, loss: float) -> None:
        if step % 8 == 0:  # refreshing on every batch costs more than a small batch itself
            self.progress.update(self.task, completed=step + 1, loss=loss)

    def on_epoch_end(self, trainer: Trainer, logs: dict) -> None:
        val = f"val_{self.metric} {logs[f'val_{self.metric}']:.4f}"
        self._last_loss, self._last_val = logs["train_loss"], val
        self.progress.update(self.task, completed=trainer.steps_per_epoch, loss=logs["train_loss"], val=val)
        if not self.console.is_terminal:
            print(
                f"epoch {logs['epoch'] + 1}: loss {logs['train_loss']:.4f}  {val}  ({logs['time']:.1f}s)",
                file=sys.stderr,
            )

    def on_train_end(self, trainer: Trainer) -> None:
        self.progress.stop()

    def on_train_abort(self, trainer: Trainer) -> None:
        if self.progress is not None:
            self.progress.stop()  # shows the cursor again
