"""Training threads: one titanic training alone vs four at once (bench/results/threads.json).

Each training is a `loopml train` process (no tracking, no cache); its training time is the
"trained N epochs in X s" it prints. Three settings:

- ``solo``: one training, default threads;
- ``parallel_default``: four trainings started together, default threads (loopml's fair share);
- ``parallel_omp1``: four trainings together with OMP_NUM_THREADS=1 (the hand-tuned baseline);
- ``parallel_all_cores``: four together, each with LOOPML_THREADS=<usable CPUs> (torch's own
  default, what loopml did before it took its fair share).

On a machine with C usable CPUs, four trainings at once can at best take max(1, 4 / C) times the
solo time each; ``ratio_to_fair_share`` is the measured mean over that. Needs
../shared/datasets/titanic (skipped with a reason otherwise).

    python -m bench.threads [--parallel 4] [--epochs 15]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import realdata  # noqa: E402
from bench.common import write_result  # noqa: E402
from loopml.train.threads import available_cpus  # noqa: E402

TRAINED = re.compile(r"trained (\d+) epochs in ([\d.]+)s")


def _start(data: Path, folder: Path, epochs: int, env: dict) -> subprocess.Popen:
    command = [sys.executable, "-m", "loopml", "train", "-d", str(data), "-q", "--no-track",
               "--no-cache", "--epochs", str(epochs), "-o", str(folder / "model"), "--seed", "0"]
    folder.mkdir(parents=True, exist_ok=True)
    # a fixed epoch count (no early stopping) makes the runs do the same work
    (folder / "config.yaml").write_text("target: {column: Survived}\ntraining: {early_stopping: {patience: 1000}}\n")
    command += ["-c", str(folder / "config.yaml")]
    return subprocess.Popen(command, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(process: subprocess.Popen) -> dict:
    out, err = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"training failed ({process.returncode}): {err.strip()[-500:]}")
    match = TRAINED.search(err + out)
    return {"epochs": int(match.group(1)), "train_seconds": float(match.group(2))}


def run(data: Path, root: Path, count: int, epochs: int, extra_env: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "LOOPML_THREADS", "MKL_NUM_THREADS")}
    env.update(extra_env, PYTHONPATH=str(ROOT))
    began = time.perf_counter()
    processes = [_start(data, root / f"run{i}", epochs, env) for i in range(count)]
    results = [_finish(p) for p in processes]
    seconds = [r["train_seconds"] for r in results]
    return {"processes": count, "env": extra_env, "train_seconds": seconds, "mean_train_seconds": statistics.mean(seconds),
            "wall_seconds": time.perf_counter() - began}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=15)
    args = parser.parse_args()
    if not realdata.available("titanic"):
        print("skipped: ../shared/datasets/titanic is not present on this machine")
        return
    data = (realdata.ROOT / "titanic" / "train.csv").resolve()
    cpus = available_cpus()
    with tempfile.TemporaryDirectory(prefix="loopml-threads-") as tmp:
        root = Path(tmp)
        solo = run(data, root / "solo", 1, args.epochs, {})
        default = run(data, root / "default", args.parallel, args.epochs, {})
        omp1 = run(data, root / "omp1", args.parallel, args.epochs, {"OMP_NUM_THREADS": "1"})
        all_cores = run(data, root / "all", args.parallel, args.epochs, {"LOOPML_THREADS": str(cpus)})
    fair = solo["mean_train_seconds"] * max(1.0, args.parallel / cpus)
    for r in (default, omp1, all_cores):
        r["ratio_to_solo"] = r["mean_train_seconds"] / solo["mean_train_seconds"]
        r["ratio_to_fair_share"] = r["mean_train_seconds"] / fair
    print(f"usable CPUs {cpus}; solo {solo['mean_train_seconds']:.2f}s; {args.parallel} at once: "
          f"default {default['mean_train_seconds']:.2f}s ({default['ratio_to_fair_share']:.2f}x fair share), "
          f"OMP_NUM_THREADS=1 {omp1['mean_train_seconds']:.2f}s ({omp1['ratio_to_fair_share']:.2f}x fair share), "
          f"all cores each {all_cores['mean_train_seconds']:.2f}s ({all_cores['ratio_to_fair_share']:.2f}x fair share)")
    print("results:", write_result("threads", {"usable_cpus": cpus, "epochs": args.epochs, "fair_share_seconds": fair,
                                               "solo": solo, "parallel_default": default, "parallel_omp1": omp1,
                                               "parallel_all_cores": all_cores}))


if __name__ == "__main__":
    main()
