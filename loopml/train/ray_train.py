"""``loopml train --ray [ADDRESS] --workers N``: the same Trainer, data-parallel on Ray Train.

Nothing here is a second training loop. ``ray_launch`` puts a ``RayLauncher`` in
``trainer.LAUNCHER`` for the command; the network learner builds its Trainer as always, and the
Trainer hands ``fit`` to the launcher, which runs that same ``Trainer.fit`` in N Ray Train
workers (``TorchTrainer``: gloo on CPU, nccl on GPU). In each worker only the forward pass is the
DistributedDataParallel-wrapped network (so gradients are averaged), and each rank trains on its
part of every epoch's order (``trainer.shard_rows``, DistributedSampler's split). The config's
``batch_size`` stays the global batch: each of N workers takes ``ceil(batch_size / N)`` rows.

Every rank evaluates the same validation rows with the same weights; rank 0's stop decision (early
stopping, time limit) is broadcast so no rank waits alone in an all-reduce. After every epoch rank 0
reports loopml's own checkpoint (``last.safetensors``) to Ray; in Ray Train V2 the result's metrics
come only with a reported checkpoint. At the end the driver's Trainer resumes from Ray's last
checkpoint (weights, optimizer, history, best epoch) and replays the epochs' logs to its stateless
callbacks (the run logger, the progress bar): the bundle, report and registry record are the
ordinary ones. Ray moves the network and tensors between processes with its own serialisation;
everything loopml writes stays safetensors/JSON.

Without an address a local cluster is started for the command and always shut down after it.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import signal
import tempfile
import threading
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loopml.errors import LoopmlError
from loopml.train.callbacks import BestModel, Callback, Checkpoint, History
from loopml.train.state import flatten, save_state, unflatten

RAY_MISSING = "Ray is not installed: pip install loopml[ray]"
#: ``--ray`` without an address: start a local cluster for this command
LOCAL = "local"
STATE_FILE = "last.safetensors"


def require_ray() -> None:
    """One line naming the extra when Ray (with its Train and Tune libraries) is missing."""
    try:
        import ray  # noqa: F401
        import ray.train.torch  # noqa: F401
        import ray.tune  # noqa: F401
    except ImportError:
        raise LoopmlError(RAY_MISSING) from None


# -- the cluster ------------------------------------------------------------------------------------
@contextlib.contextmanager
def ray_cluster(address: str | None, num_cpus: int | None = None) -> Iterator[None]:
    """Connect to ``address``, or start a local cluster (``None``/"local") and shut it down after, also
    on an error or Ctrl-C. An already initialised Ray (a test's shared cluster) is used and left running."""
    require_ray()
    import logging

    import ray

    if ray.is_initialized():
        yield
        return
    quiet = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
    try:
        if address in (None, LOCAL):
            from loopml.train.threads import available_cpus

            ray.init(num_cpus=num_cpus or available_cpus(), **quiet)
        else:
            with warnings.catch_warnings():  # Ray Client's timeout warning would repeat the error below
                warnings.simplefilter("ignore", UserWarning)
                ray.init(address=address, **quiet)
    except (ConnectionError, ValueError) as e:  # ValueError: a malformed address, or ray:// without ray[client]
        ray.shutdown()
        raise LoopmlError(f"cannot connect to the Ray cluster at {address}: {str(e).strip().splitlines()[0]}") from None
    try:
        yield
    finally:
        ray.shutdown()


@dataclass
class RaySettings:
    address: str | None = None
    workers: int = 2


def check_ray_learner(learner: str, automl: bool = False) -> None:
    if automl:
        raise LoopmlError("--ray trains one network data-parallel; it does not run AutoML (drop --time-budget or --ray)")
    if learner != "network":
        raise LoopmlError(f"--ray trains the network learner data-parallel; learner {learner} trains in one process "
                          "(Ray's XGBoost/LightGBM trainers take Ray Datasets and return their own boosters, not "
                          "loopml's learner): drop --ray, or use learner: network")


@contextlib.contextmanager
def ray_launch(address: str | None, workers: int, learner: str, automl: bool = False) -> Iterator[None]:
    """Around a command: every Trainer's ``fit`` runs on Ray with ``workers`` workers. ``address`` None: no Ray."""
    if address is None:
        if workers != 1:
            raise LoopmlError("--workers is the number of Ray Train workers: it needs --ray [ADDRESS]")
        yield
        return
    if workers < 1:
        raise LoopmlError(f"--workers must be at least 1, not {workers}")
    check_ray_learner(learner, automl)
    if address in (None, LOCAL):
        check_local_workers(workers)
    from loopml.train.trainer import LAUNCHER

    with ray_cluster(address, num_cpus=None):
        token = LAUNCHER.set(RayLauncher(RaySettings(address, workers)))
        try:
            yield
        finally:
            LAUNCHER.reset(token)


def check_local_workers(workers: int) -> None:
    """Each worker takes a CPU: more workers than a local cluster has CPUs would wait for them forever."""
    require_ray()
    import ray

    from loopml.train.threads import available_cpus

    cpus = int(ray.cluster_resources().get("CPU", 0)) if ray.is_initialized() else available_cpus()
    if workers > cpus:
        raise LoopmlError(f"--workers {workers} is more than the {cpus} CPUs of a local Ray cluster (each worker "
                          f"takes one): use --workers {cpus} or less, or --ray ADDRESS of a larger cluster")


# -- the driver -------------------------------------------------------------------------------------
class RayLauncher:
    """``Trainer.fit`` on Ray Train: runs the loop in the workers, then brings its state back."""

    def __init__(self, settings: RaySettings) -> None:
        self.settings = settings
        #: the last run's Ray result (the bench reads its timings)
        self.result: Any = None

    def fit(self, trainer, train, val) -> list[dict]:
        start_epoch = trainer.epoch
        checkpoints = [cb for cb in trainer.callbacks if isinstance(cb, Checkpoint)]
        # Ray keeps its checkpoints beside loopml's (so an interrupted run leaves one), else in a temporary folder
        owned = None if checkpoints else tempfile.mkdtemp(prefix="loopml-ray-")
        # absolute: Ray reads a relative storage_path as a URI and fails ("URI has empty scheme")
        storage = Path(owned) if owned else (checkpoints[0].path.parent / "ray").absolute()
        name = f"train-{uuid.uuid4().hex[:8]}"
        for cb in trainer.callbacks:
            cb.on_train_begin(trainer)
        try:
            self.result = self._run(trainer, train, val, storage, name)
            if self.result.checkpoint is not None:  # None: no epoch was left to train (a finished run resumed)
                with self.result.checkpoint.as_directory() as folder:
                    trainer.resume(Path(folder))
            for logs in trainer.history[start_epoch:]:
                for cb in self._observers(trainer):
                    cb.on_epoch_begin(trainer, int(logs["epoch"]))
                    cb.on_epoch_end(trainer, logs)
            for cb in checkpoints:
                save_state(trainer.state_dict(), cb.path)
        except BaseException:
            for cb in trainer.callbacks:
                cb.on_train_abort(trainer)
            for cb in checkpoints:  # what Ray kept, where ``--resume`` looks for it
                _keep_latest(storage / name, cb.path)
            raise
        finally:
            shutil.rmtree(storage / name, ignore_errors=True)
            if owned:
                shutil.rmtree(owned, ignore_errors=True)
        for cb in trainer.callbacks:
            cb.on_train_end(trainer)
        return trainer.history

    @staticmethod
    def _observers(trainer) -> list[Callback]:
        """The driver's callbacks without state of their own (run logger, progress bar): they see every
        epoch again; the stateful ones (history, best model) were restored from the checkpoint."""
        return [cb for cb in trainer.callbacks if not isinstance(cb, Checkpoint) and not cb.state_dict()]

    def _run(self, trainer, train, val, storage: Path, name: str):
        import ray
        from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer

        workers = self.settings.workers
        cfg = trainer.config
        best = next((cb for cb in trainer.callbacks if isinstance(cb, BestModel)), None)
        job = {
            "network": trainer.model,
            "config": cfg.model_copy(update={"batch_size": max(1, math.ceil(cfg.batch_size / workers))}),
            "best": None if best is None else [best.metric, best.patience, best.min_delta],
            "metric_fn": trainer.metric_fn,
            "data": ray.put((train, val)),
            "start": encode_state(trainer.state_dict()) if trainer.epoch else None,
        }
        use_gpu = trainer.device.type == "cuda"
        # a local cluster's CPUs are shared out; on a remote one each worker asks for one (it must fit a node)
        local = self.settings.address in (None, LOCAL)
        cpus = max(1, int(ray.available_resources().get("CPU", workers)) // workers) if local and not use_gpu else 1
        run = TorchTrainer(
            worker_loop, train_loop_config=job,
            scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu, resources_per_worker={"CPU": cpus}),
            run_config=RunConfig(name=name, storage_path=str(storage), failure_config=FailureConfig(max_failures=0),
                                 checkpoint_config=CheckpointConfig(num_to_keep=1)),
        )
        return fit_interruptibly(run)


def fit_interruptibly(run) -> Any:
    """``run.fit()`` where Ctrl-C is a KeyboardInterrupt (exit 130). Ray Train's own SIGINT handler exits 0
    on the third Ctrl-C and stays installed after ``fit``: a later Ctrl-C then restarted a Ray instance to
    abort a controller long gone. Here the first Ctrl-C asks the controller to abort, a second one interrupts
    at once, and the previous handler is back afterwards."""
    if threading.current_thread() is not threading.main_thread():  # no signals there (Ray skips its handler too)
        return run.fit()
    previous = signal.getsignal(signal.SIGINT) or signal.default_int_handler
    interrupted: list[int] = []

    def register(controller) -> None:
        def on_sigint(signum, frame) -> None:
            interrupted.append(signum)
            signal.signal(signal.SIGINT, previous)
            controller.abort.remote()  # stops the workers; fit() then returns or raises

        signal.signal(signal.SIGINT, on_sigint)

    run._register_sigint_handler = register  # Ray 2.60's hook (pinned in the extra)
    try:
        result = run.fit()
    except Exception:  # what an aborted run raises is Ray's choice; after a Ctrl-C it is the interrupt
        if interrupted:
            raise KeyboardInterrupt from None
        raise
    finally:
        signal.signal(signal.SIGINT, previous)
    if interrupted:
        raise KeyboardInterrupt
    return result


def encode_state(state: dict) -> dict:
    """A trainer state as bytes for another process: safetensors bytes and its JSON skeleton (no pickle)."""
    from safetensors.torch import save

    tensors: dict = {}
    skeleton = flatten(state, tensors)
    return {"skeleton": json.dumps(skeleton), "tensors": save(tensors)}


def decode_state(encoded: dict) -> dict:
    from safetensors.torch import load

    return unflatten(json.loads(encoded["skeleton"]), load(encoded["tensors"]))


def _keep_latest(run_folder: Path, target: Path) -> None:
    """Copy the newest loopml checkpoint Ray kept in ``run_folder`` to ``target`` (atomically)."""
    found = sorted(run_folder.glob(f"**/{STATE_FILE}"), key=lambda p: p.stat().st_mtime)
    if not found:
        return
    tmp = target.with_name(f".{target.name}.tmp")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(found[-1], tmp)
    tmp.replace(target)


# -- the workers ------------------------------------------------------------------------------------
def worker_loop(job: dict) -> None:
    """One Ray Train worker: the same Trainer on this rank's rows, its forward pass DDP-wrapped."""
    import ray
    import ray.train
    import ray.train.torch
    import torch
    from torch.nn.parallel import DistributedDataParallel

    from loopml.train.determinism import deterministic_algorithms
    from loopml.train.trainer import Trainer

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    cpus = int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1))
    torch.set_num_threads(max(1, cpus))
    deterministic_algorithms()
    torch.manual_seed(job["config"].seed + rank)  # dropout differs per rank, as its rows do
    device = ray.train.torch.get_device()
    network = job["network"].to(device)
    config = job["config"].model_copy(update={"device": str(device)})
    callbacks: list[Callback] = [EpochMean(), History()]
    if job["best"] is not None:
        callbacks.append(BestModel(*job["best"]))
    callbacks += [RankZeroStops(), RayReport(rank)]
    trainer = Trainer(network, config, callbacks, metric_fn=job["metric_fn"])
    trainer.forward = DistributedDataParallel(network, device_ids=[device] if device.type == "cuda" else None)
    trainer.shard = (rank, world)
    checkpoint = ray.train.get_checkpoint()  # Ray's own restart after a worker failure
    with tempfile.TemporaryDirectory(prefix="loopml-ray-start-") as folder:
        if checkpoint is not None:
            with checkpoint.as_directory() as kept:
                trainer.resume(Path(kept))
        elif job["start"] is not None:  # a resumed loopml run: the driver's state
            save_state(decode_state(job["start"]), Path(folder) / STATE_FILE)
            trainer.resume(Path(folder))
    train, val = ray.get(job["data"])
    trainer.fit(train, val)


class EpochMean(Callback):
    """First at each epoch's end: the training loss and metrics averaged over the ranks (each saw its part)."""

    def on_epoch_end(self, trainer, logs: dict) -> None:
        import torch
        import torch.distributed as dist

        keys = [k for k, v in logs.items() if k.startswith("train_") and isinstance(v, (int, float))]
        values = torch.tensor([float(logs[k]) for k in keys], dtype=torch.float64, device=trainer.device)  # nccl: on the GPU
        dist.all_reduce(values)
        for key, value in zip(keys, (values / dist.get_world_size()).cpu().tolist(), strict=True):
            logs[key] = value


class RankZeroStops(Callback):
    """After early stopping and the time limit have spoken: every rank does what rank 0 decided."""

    def on_epoch_end(self, trainer, logs: dict) -> None:
        import torch
        import torch.distributed as dist

        flag = torch.tensor([1 if trainer.stop_reason else 0], device=trainer.device)
        dist.broadcast(flag, src=0)
        if not flag.item():
            trainer.stop_reason = None
        elif trainer.stop_reason is None:
            trainer.stop_reason = "stopped with rank 0"


class RayReport(Checkpoint):
    """Last at each epoch's end (a Checkpoint): the epoch's logs to Ray, with loopml's checkpoint from rank 0."""

    def __init__(self, rank: int) -> None:
        self.rank = rank

    def on_epoch_end(self, trainer, logs: dict) -> None:
        import ray.train

        metrics = {k: v for k, v in logs.items() if isinstance(v, (int, float))}
        if self.rank != 0:
            ray.train.report(metrics)  # every rank reports: it is a barrier
            return
        with tempfile.TemporaryDirectory(prefix="loopml-ray-ckpt-") as folder:
            save_state(trainer.state_dict(), Path(folder) / STATE_FILE)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))
