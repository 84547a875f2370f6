"""Federated training on adult: FedAvg and FedProx over 5 non-IID clients vs centralised training vs
the best single client, all on the official test set.

    python -m bench.federate [--quick] [--rounds 20] [--rounds-multi 12] [--local-epochs 2] [--epochs 20]
        [--batch-size 512] [--column education] [--clients 5] [--seeds 0] [--mu 0.1]

adult.data partitioned by ``--column`` (each value whole to one client, largest first to the
smallest client: federate/clients.py ``partition``); adult.test to test. Every model is loopml's
default network (same config); the centralised one and each single client train with ``Model.fit``
(10% validation carved out, early stopping); the federated ones with ``federate`` (each client
carves its own 10% validation; the round with the lowest row-weighted validation loss is kept,
patience 5 rounds). Preprocessing of the federated models is fitted from the clients' statistics.

``--quick``: 4,000 training rows, few rounds: a smoke run, marked quick.
Results: bench/results/federate.json and federate.md (federate_quick.* for --quick).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import loopml  # noqa: E402
from bench import realdata  # noqa: E402
from bench.common import RESULTS, write_result  # noqa: E402
from loopml.config import load_config  # noqa: E402
from loopml.federate.clients import Channel, Client, partition  # noqa: E402
from loopml.federate.fedavg import LocalPool, Settings, federate  # noqa: E402

POSITIVE = ">50K"


def test_metrics(model, test) -> dict:
    m = model.evaluate(test)
    return {"accuracy": m["accuracy"], "roc_auc": m.get("roc_auc"), "f1": m.get("f1")}


BATCH = {"batch_size": 512}


def centralised(train, test, seed: int, epochs: int) -> dict:
    start = time.perf_counter()
    model = loopml.Model(target="income", training={"seed": seed, "epochs": epochs, **BATCH}, split={"seed": seed})
    model.fit(train, progress=False, cache_dir=False)
    return {**test_metrics(model, test), "epochs_run": model.info["training"]["epochs_run"],
            "seconds": time.perf_counter() - start, "rows": len(train)}


def federated(parts, test, seed: int, rounds: int, algorithm: str, mu: float, local_epochs: int) -> dict:
    cfg = load_config(None, target="income", training={"seed": seed, **BATCH}, split={"seed": seed})
    pool = LocalPool([Client(n, f, cfg.model_dump(mode="json"), has_test=True) for n, f in parts], Channel())
    start = time.perf_counter()
    model = federate(cfg, pool, Settings(rounds, algorithm, mu, local_epochs), test=test)
    fed = model.info["training"]["federated"]
    return {**test_metrics(model, test), "rounds_run": fed["rounds_run"], "best_round": fed["best_round"],
            "seconds": time.perf_counter() - start, "algorithm": algorithm, "mu": mu if algorithm == "fedprox" else 0.0,
            "local_epochs": local_epochs}


def markdown(result: dict) -> str:
    s = result["settings"]
    out = [f"# federate: adult, {s['clients']} clients partitioned by {s['column']}"
           + (" (QUICK smoke run)" if result["quick"] else ""), "",
           f"{result['train_rows']} training rows (adult.data), {result['test_rows']} test rows (adult.test); "
           f"seeds {s['seeds']}; loopml's default network everywhere (batch size {s['batch_size']}, 1 torch thread); up "
           f"to {s['rounds']} rounds with 1 local epoch, {s['rounds_multi']} with {s['local_epochs']} (federated), or "
           f"{s['epochs']} epochs (centralised / single client); early stopping on validation loss (patience 5). "
           f"Machine load during the run (1-min average): {result['load']}.", "",
           "## Clients (non-IID: each value of the column is held by one client)", "",
           "| client | values | rows | positive rate |", "|---|---|---:|---:|"]
    for c in result["clients"]:
        out.append(f"| {c['index']} | {c['values']} | {c['rows']} | {c['positive_rate']:.3f} |")
    out += ["", "## Official test set (mean over seeds)", "",
            "| model | accuracy | ROC-AUC | F1 (>50K) | seconds | notes |", "|---|---:|---:|---:|---:|---|"]
    for row in result["table"]:
        out.append(f"| {row['model']} | {row['accuracy']:.4f} | {row['roc_auc']:.4f} | {row['f1']:.4f} | "
                   f"{row['seconds']:.0f} | {row['notes']} |")
    out += ["", "Single clients trained alone (test accuracy / AUC): "
            + "; ".join(f"client {c['index']}: {c['accuracy']:.4f} / {c['roc_auc']:.4f}" for c in result["singles"]),
            "", result["verdict"], "",
            "Notes: the best single client is picked by its test accuracy (optimistic for it). A federated run "
            "whose best round is its last was still improving when the round limit stopped it. FedProx's "
            "proximal term is meant for clients that drift apart over many local epochs; here it does not beat "
            "FedAvg. Federated preprocessing: exact for categories, binaries, integer columns and means/stds; "
            "number bin edges of the continuous column fnlwgt from a 2,048-bin histogram.", ""]
    return "\n".join(out)


def mean_row(name: str, runs: list[dict], notes: str) -> dict:
    keys = ("accuracy", "roc_auc", "f1", "seconds")
    return {"model": name, **{k: sum(r[k] for r in runs) / len(runs) for k in keys}, "notes": notes, "runs": runs}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--rounds-multi", type=int, default=12, help="rounds of the variants with --local-epochs")
    ap.add_argument("--local-epochs", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--column", default="education")
    ap.add_argument("--clients", type=int, default=5)
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--mu", type=float, default=0.1)
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    BATCH["batch_size"] = args.batch_size
    import torch

    torch.set_num_threads(1)  # a shared 2-core machine: one thread per process is the fastest there
    train, test = realdata.adult()
    if args.quick:
        train = realdata.subsample(train, 4000, "income", seed=0)
        args.rounds, args.rounds_multi, args.epochs = min(args.rounds, 3), min(args.rounds_multi, 2), min(args.epochs, 3)
    parts = partition(train, args.column, args.clients)
    clients = [{"index": i + 1, "values": name.split(":", 1)[1].replace("|", ", "), "rows": len(f),
                "positive_rate": float((f["income"] == POSITIVE).mean())} for i, (name, f) in enumerate(parts)]
    start = time.perf_counter()
    central = [centralised(train, test, s, args.epochs) for s in seeds]
    singles_by_seed = [[centralised(f, test, s, args.epochs) for _, f in parts] for s in seeds]
    singles = [{"index": i + 1, **{k: sum(run[i][k] for run in singles_by_seed) / len(seeds)
                                   for k in ("accuracy", "roc_auc", "f1", "seconds")}} for i in range(len(parts))]
    best = max(range(len(parts)), key=lambda i: singles[i]["accuracy"])
    e = args.local_epochs
    variants = [("FedAvg, 1 local epoch", "fedavg", 0.0, 1, args.rounds),
                (f"FedAvg, {e} local epochs", "fedavg", 0.0, e, args.rounds_multi),
                (f"FedProx mu={args.mu:g}, {e} local epochs", "fedprox", args.mu, e, args.rounds_multi)]
    table = [mean_row("centralised (pooled rows)", central, f"epochs run {[r['epochs_run'] for r in central]}"),
             mean_row(f"best single client ({best + 1})", [run[best] for run in singles_by_seed],
                      f"client {best + 1} of {len(parts)} alone, chosen by test accuracy")]
    for label, algorithm, mu, epochs, rounds in variants:
        runs = [federated(parts, test, s, rounds, algorithm, mu, epochs) for s in seeds]
        table.append(mean_row(label, runs, f"rounds run {[r['rounds_run'] for r in runs]}, best round "
                                           f"{[r['best_round'] for r in runs]}"))
    fed_best = max(table[2:], key=lambda r: r["accuracy"])
    verdict = (f"Best federated ({fed_best['model']}): accuracy {fed_best['accuracy']:.4f} vs centralised "
               f"{table[0]['accuracy']:.4f} ({fed_best['accuracy'] - table[0]['accuracy']:+.4f}) and vs the best single "
               f"client {table[1]['accuracy']:.4f} ({fed_best['accuracy'] - table[1]['accuracy']:+.4f}); AUC "
               f"{fed_best['roc_auc']:.4f} vs {table[0]['roc_auc']:.4f} and {table[1]['roc_auc']:.4f}.")
    result = {"quick": args.quick, "train_rows": len(train), "test_rows": len(test), "clients": clients,
              "singles": singles, "table": table, "verdict": verdict, "seconds": time.perf_counter() - start,
              "load": round(os.getloadavg()[0], 1),
              "settings": {"column": args.column, "clients": args.clients, "seeds": seeds, "rounds": args.rounds,
                           "rounds_multi": args.rounds_multi, "local_epochs": args.local_epochs,
                           "batch_size": args.batch_size,
                           "epochs": args.epochs, "mu": args.mu}}
    name = "federate_quick" if args.quick else "federate"
    write_result(name, result)
    (RESULTS / f"{name}.md").write_text(markdown(result), encoding="utf-8")
    print(markdown(result))


if __name__ == "__main__":
    main()
