"""bench/scale.py's ``ray`` section: what Ray costs on one machine, against one process, in one run.

The same adult subset, config and seed trained twice: in this process (the ordinary ``Model.fit``)
and with ``--ray``'s launcher on a local Ray cluster with W workers (the same Trainer, DDP over
gloo). Timed: ``ray.init`` of the local cluster, each whole fit, the per-epoch time (median of
the epochs' ``time`` logs: the worker's loop, the all-reduces included), and ``ray.shutdown``.
Ratios are against the single process of the same run. Ray pays off only where one machine is not
enough; on one machine it is overhead, and this section says how much.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from bench import realdata


def section_ray(args: argparse.Namespace) -> dict:
    import torch

    import loopml
    from loopml.train.ray_train import ray_cluster, ray_launch

    if not realdata.available("adult"):
        return {"skipped": "../shared/datasets/adult is not present"}
    try:
        import ray
    except ImportError:
        return {"skipped": "Ray is not installed (pip install loopml[ray])"}
    torch.set_num_threads(args.threads)
    train, _ = realdata.adult()
    frame = realdata.subsample(train, args.rows_adult, "income")
    config = {"target": "income", "training": {"epochs": args.epochs, "early_stopping": {"patience": 0},
                                               "threads": args.threads}}

    def fit(launch) -> tuple[float, loopml.Model]:
        model = loopml.Model(config)
        start = time.perf_counter()
        with launch:
            model.fit(frame, progress=False, cache_dir=False)
        return time.perf_counter() - start, model

    import contextlib

    # untimed: a tiny fit first, so neither timed fit pays loopml's first imports (report, importance)
    loopml.Model({**config, "training": {**config["training"], "epochs": 1}}).fit(frame.head(300), progress=False,
                                                                                   cache_dir=False)
    single_s, single = fit(contextlib.nullcontext())
    start = time.perf_counter()
    with ray_cluster(None, num_cpus=args.ray_workers):
        init_s = time.perf_counter() - start
        ray_s, on_ray = fit(ray_launch("local", args.ray_workers, "network"))
        stop = time.perf_counter()
    shutdown_s = time.perf_counter() - stop
    assert not ray.is_initialized()

    def epoch_s(model) -> float:
        return statistics.median(h["time"] for h in model.history)

    def outside_epochs_s(seconds: float, model) -> float:
        """Preparation, evaluation, report data: and on Ray, Ray Train's start and stop of its workers."""
        return seconds - sum(h["time"] for h in model.history)

    out = {
        "rows": len(frame), "epochs": args.epochs, "workers": args.ray_workers, "threads": args.threads,
        "ray_version": ray.__version__, "load_average_1m_after": os.getloadavg()[0],
        "single": {"fit_s": single_s, "epoch_s": epoch_s(single), "outside_epochs_s": outside_epochs_s(single_s, single),
                   "val_accuracy": single.metrics["validation"]["accuracy"]},
        "ray": {"init_s": init_s, "fit_s": ray_s, "epoch_s": epoch_s(on_ray), "shutdown_s": shutdown_s,
                "outside_epochs_s": outside_epochs_s(ray_s, on_ray), "extra_over_single_s": ray_s - single_s,
                "val_accuracy": on_ray.metrics["validation"]["accuracy"]},
    }
    out["ratios"] = {
        "init_over_single_fit": init_s / single_s,
        "ray_fit_over_single_fit": ray_s / single_s,
        "ray_command_over_single_fit": (init_s + ray_s + shutdown_s) / single_s,
        "ray_epoch_over_single_epoch": out["ray"]["epoch_s"] / out["single"]["epoch_s"],
    }
    r = out["ratios"]
    print(f"ray: init {init_s:.1f}s, fit {ray_s:.1f}s vs {single_s:.1f}s (x{r['ray_fit_over_single_fit']:.1f}), "
          f"epoch x{r['ray_epoch_over_single_epoch']:.2f}", flush=True)
    return out


def ray_markdown(result: dict) -> str:
    if result.get("skipped"):
        return f"# Ray vs one process (bench/scale.py --only ray)\n\nskipped: {result['skipped']}\n"
    s, r, q = result["single"], result["ray"], result["ratios"]
    return "\n".join([
        "# Ray vs one process (bench/scale.py --only ray)", "",
        f"adult, {result['rows']} rows, {result['epochs']} epochs, {result['workers']} Ray Train workers (DDP, gloo) "
        f"vs one process; ray {result['ray_version']}; ratios from this one run.", "",
        "| | one process | Ray | ratio |", "|---|---|---|---|",
        f"| ray.init (local cluster) | - | {r['init_s']:.1f} s | x{q['init_over_single_fit']:.1f} of one process's fit |",
        f"| fit (Model.fit) | {s['fit_s']:.1f} s | {r['fit_s']:.1f} s | x{q['ray_fit_over_single_fit']:.1f} |",
        f"| whole command (init + fit + shutdown) | {s['fit_s']:.1f} s | "
        f"{r['init_s'] + r['fit_s'] + r['shutdown_s']:.1f} s | x{q['ray_command_over_single_fit']:.1f} |",
        f"| per epoch (median) | {s['epoch_s']:.3f} s | {r['epoch_s']:.3f} s | x{q['ray_epoch_over_single_epoch']:.2f} |",
        f"| fit outside the epochs (preparation, evaluation; on Ray also its workers' start/stop) | "
        f"{s['outside_epochs_s']:.1f} s | {r['outside_epochs_s']:.1f} s | +{r['extra_over_single_s']:.1f} s on Ray |",
        f"| validation accuracy | {s['val_accuracy']:.4f} | {r['val_accuracy']:.4f} | |", "",
    ])
