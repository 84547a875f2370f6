"""Contrastive pretraining vs training from scratch, with few labels, on a CPU budget.

1. CIFAR-10 subset (10,000 32x32 JPEGs, 10 classes): a fixed stratified 80/20 split (seed 0); 10% of
   the 8,000 training images keep their labels (800, stratified). SimCLR (`loopml pretrain --method
   simclr`'s code) pretrains the cnn encoder on all 8,000 training images, labels unused, for at most
   ``--simclr-minutes`` of training; then the same network and fine-tune budget is trained on the 800
   labelled images (20% of them as validation for picking the best epoch) from scratch and from the
   pretrained encoder (``training.init_from``), for each fine-tune seed, and scored on the 2,000 held-out.
2. adult: SCARF (`--method scarf`) pretrains the tabular encoders + combiner on all 32,561 rows of
   adult.data without income; fine-tune on 1% and 10% of those rows (stratified) from scratch vs
   pretrained, scored on the official adult.test (16,281 rows).

Caveat in both: the pretrained arm also takes the pretraining's fitted preprocessing (category
vocabularies, scaling, image mean/std: fitted on all unlabelled rows), the scratch arm fits it on the
labelled rows only.

    python -m bench.pretrain_contrastive [--seeds 3] [--simclr-minutes 12] [--skip-cifar] [--skip-adult]

Pretrained encoders are cached under bench/.cache/pretrain_contrastive/ (delete it to pretrain again).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import pandas as pd
from sklearn.model_selection import train_test_split

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import loopml  # noqa: E402
from bench import realdata  # noqa: E402
from bench.common import write_result  # noqa: E402
from loopml.data.read import read_table  # noqa: E402
from loopml.pretrain import PretrainOptions, PretrainRequest  # noqa: E402

CACHE = Path(__file__).resolve().parent / ".cache" / "pretrain_contrastive"
RESULTS = Path(__file__).resolve().parent / "results"
CIFAR = realdata.ROOT / "cifar10_train_subset" / "train"

IMAGE = {"type": "image", "encoder": {"type": "cnn", "channels": [16, 32, 64], "dropout": 0.1},
         "augment": {"crop_padding": 4, "flip": True}}
CIFAR_CONFIG = {
    "target": "label", "data": {"media_root": str(CIFAR)}, "split": {"validation": 0.2, "test": 0.0},
    "features": {"image": IMAGE},
    "training": {"epochs": 30, "batch_size": 64, "optimizer": {"type": "adamw", "lr": 0.003, "weight_decay": 0.0005},
                 "scheduler": {"type": "cosine", "warmup_epochs": 1}, "early_stopping": {"metric": "accuracy",
                                                                                        "patience": 0}},
}
ADULT_CONFIG = {
    "target": "income", "split": {"validation": 0.2, "test": 0.0}, "combiner": {"layers": [256, 256]},
    "training": {"epochs": 60, "batch_size": 128, "early_stopping": {"metric": "loss", "patience": 8}},
}


def pretrain(method: str, frame: pd.DataFrame, columns: list[str], config: dict, options: PretrainOptions) -> dict:
    """The method's ``run`` on ``frame`` (as the CLI calls it), cached by its settings."""
    from loopml.pretrain import method_function

    key = json.dumps({"views": "view_augment", "method": method, "config": config, "options": options.given(),
                      "rows": len(frame)}, sort_keys=True, default=str)
    output = CACHE / f"{method}-encoder-{int(options.max_time or 0)}s"
    if (output / "pretrain.json").is_file() and (output / "key.json").is_file() \
            and (output / "key.json").read_text() == key:
        summary = json.loads((output / "pretrain.json").read_text())
        summary["cached"] = True
        return summary | {"output": str(output)}
    CACHE.mkdir(parents=True, exist_ok=True)
    (CACHE / f"{method}-config.yaml").write_text(json.dumps(config))  # JSON is YAML
    options.config = CACHE / f"{method}-config.yaml"
    checkpoints = CACHE / f"{method}.partial"
    shutil.rmtree(checkpoints, ignore_errors=True)
    checkpoints.mkdir(parents=True)
    request = PretrainRequest(frame=frame, columns=columns, output=output, options=options, checkpoints=checkpoints,
                              progress=True, echo=print, source={"rows": len(frame)})
    summary = method_function(method)(request)
    (output / "key.json").write_text(key)
    shutil.rmtree(checkpoints, ignore_errors=True)
    summary["cached"] = False
    return summary | {"output": str(output)}


def fine_tune(config: dict, labelled: pd.DataFrame, test: pd.DataFrame, seed: int, init_from: Path | None,
              arm: str | None = None, frozen: bool = False) -> dict:
    """One fine-tune; ``frozen``: the encoders' learning rate ~0 (a probe of the features; batch norm statistics
    still adapt), the combiner and head train."""
    training = {**config["training"], "seed": seed}
    if init_from is not None:
        training["init_from"] = str(init_from)
    if frozen:
        features = {c: {**f, "encoder": {**f["encoder"], "lr": 1e-9}} for c, f in config["features"].items()}
        config = {**config, "features": features}
    start = time.perf_counter()
    model = loopml.Model({**config, "training": training}).fit(labelled, test=test, progress=False)
    t = model.info["training"]
    keep = ("accuracy", "roc_auc", "f1_macro", "log_loss")
    arm = arm or ("pretrained" if init_from is not None else "scratch")
    return {"seed": seed, "arm": arm, "pretrained": init_from is not None,
            **{f"test_{k}": model.metrics["test"][k] for k in keep if k in model.metrics["test"]},
            "validation_accuracy": model.metrics["validation"]["accuracy"], "epochs": t["epochs_run"],
            "best_epoch": t["best_epoch"], "seconds": round(time.perf_counter() - start, 1)}


def arm_of(run: dict) -> str:
    return run.get("arm") or ("pretrained" if run["pretrained"] else "scratch")


def summarise(runs: list[dict], metric: str) -> dict:
    """Per arm: mean, std, values; ``gain``: pretrained - scratch (and frozen-pretrained - frozen-random)."""
    out: dict = {}
    for arm in dict.fromkeys(arm_of(r) for r in runs):
        values = [r[metric] for r in runs if arm_of(r) == arm]
        out[arm] = {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                    "values": values}
    out["gain"] = out["pretrained"]["mean"] - out["scratch"]["mean"]
    if "frozen pretrained" in out and "frozen random" in out:
        out["frozen_gain"] = out["frozen pretrained"]["mean"] - out["frozen random"]["mean"]
    return out


def linear_probe(encoder: Path, labelled: pd.DataFrame, test: pd.DataFrame) -> dict:
    """Logistic regression on the frozen encoder's pooled features (eval mode, no augmentation), SimCLR weights vs
    the same encoder at its random initialisation: does the pretraining learn features at all?"""
    import torch
    from safetensors.torch import load_file
    from sklearn.linear_model import LogisticRegression

    from loopml.features.pipeline import Preprocessor
    from loopml.pretrain.contrastive import Backbone, pretrain_config

    raw = json.loads((encoder / "preprocessing.json").read_text())
    pre = Preprocessor.from_dict({"features": raw["features"], "target": {"column": "y", "kind": "number", "state": {}}})
    x_lab, x_test = pre.transform(labelled)["image"], pre.transform(test)["image"]
    config = pretrain_config(CACHE / "simclr-config.yaml")
    out = {}
    for name in ("random", "simclr"):
        torch.manual_seed(0)
        backbone = Backbone(pre.features, config, with_combiner=False)
        if name == "simclr":
            backbone.load_state_dict(load_file(str(encoder / "encoder.safetensors")))
        backbone.eval()
        with torch.inference_mode():
            f_lab, f_test = backbone({"image": x_lab}).numpy(), backbone({"image": x_test}).numpy()
        mean, std = f_lab.mean(0), f_lab.std(0) + 1e-6
        clf = LogisticRegression(max_iter=2000).fit((f_lab - mean) / std, labelled["label"])
        out[name] = float(clf.score((f_test - mean) / std, test["label"]))
    return out


def cifar_splits() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    table = read_table(CIFAR)
    pool, test = train_test_split(table, test_size=0.2, stratify=table["label"], random_state=0)
    labelled, _ = train_test_split(pool, train_size=0.1, stratify=pool["label"], random_state=0)
    return pool, labelled, test


def cifar(seeds: int, minutes: float, probe: bool) -> dict:
    pool, labelled, test = cifar_splits()
    config = {k: v for k, v in CIFAR_CONFIG.items() if k in ("target", "features")}
    options = PretrainOptions(epochs=100, max_time=minutes * 60, seed=0, batch_size=256)
    start = time.perf_counter()
    summary = pretrain("simclr", pool.drop(columns="label"), ["image"], config, options)
    pretrain_seconds = time.perf_counter() - start
    runs = []
    encoder = Path(summary["output"])
    arms = [("scratch", None, False), ("pretrained", encoder, False)]
    if probe:
        arms += [("frozen random", None, True), ("frozen pretrained", encoder, True)]
    for seed in range(seeds):
        for arm, init, frozen in arms:
            runs.append(fine_tune(CIFAR_CONFIG, labelled.reset_index(drop=True), test.reset_index(drop=True), seed,
                                  init, arm, frozen))
            print("cifar", runs[-1], flush=True)
    return {"sizes": {"unlabelled": len(pool), "labelled": len(labelled), "test": len(test)},
            "pretraining": {k: summary.get(k) for k in ("epochs_run", "best_epoch", "seconds", "stop_reason", "device",
                                                       "augment", "temperature", "cached", "history")},
            "pretrain_wall_seconds": pretrain_seconds, "runs": runs, "accuracy": summarise(runs, "test_accuracy"),
            "linear_probe": linear_probe(encoder, labelled, test)}


def adult(seeds: int) -> dict:
    train, test = realdata.adult()
    config = {k: v for k, v in ADULT_CONFIG.items() if k in ("target", "combiner")}
    options = PretrainOptions(epochs=15, max_time=360, seed=0, batch_size=512)
    columns = [c for c in train.columns if c != "income"]
    start = time.perf_counter()
    summary = pretrain("scarf", train.drop(columns="income"), columns, config, options)
    pretrain_seconds = time.perf_counter() - start
    out = {"pretraining": {k: summary.get(k) for k in ("epochs_run", "best_epoch", "seconds", "stop_reason",
                                                       "corruption", "temperature", "cached", "history")},
           "pretrain_wall_seconds": pretrain_seconds, "fractions": {}}
    for fraction in (0.01, 0.10):
        labelled, _ = train_test_split(train, train_size=fraction, stratify=train["income"], random_state=0)
        runs = []
        for seed in range(seeds):
            for init in (None, Path(summary["output"])):
                runs.append(fine_tune(ADULT_CONFIG, labelled.reset_index(drop=True), test, seed, init))
                print("adult", fraction, runs[-1], flush=True)
        out["fractions"][str(fraction)] = {"labelled": len(labelled), "runs": runs,
                                           "accuracy": summarise(runs, "test_accuracy"),
                                           "roc_auc": summarise(runs, "test_roc_auc")}
    return out


def _row(name: str, s: dict, first: str = "scratch", second: str = "pretrained", gain: str = "gain") -> str:
    p, c = s[second], s[first]
    return (f"| {name} | {c['mean']:.4f} ± {c['std']:.4f} | {p['mean']:.4f} ± {p['std']:.4f} | {s[gain]:+.4f} | "
            f"{', '.join(f'{v:.3f}' for v in c['values'])} / {', '.join(f'{v:.3f}' for v in p['values'])} |")


def markdown(result: dict, load: str) -> str:
    lines = ["# Contrastive pretraining vs scratch (bench/pretrain_contrastive.py)", "",
             f"CPU only ({os.cpu_count()} cores, shared with other jobs; load before: {load}). "
             f"Fine-tune seeds: {result['seeds']}; mean ± std over seeds; the last column lists every run "
             "(scratch / pretrained).", "",
             "Caveat: the pretrained arm also adopts the pretraining's fitted preprocessing (fitted on all "
             "unlabelled rows), the scratch arm fits it on the labelled rows.", ""]
    for key in sorted(k for k in result if k.startswith("cifar")):
        c = result[key]
        p = c["pretraining"]
        lines += [f"## CIFAR-10 subset, 10% labels, SimCLR ({key})", ""]
        if key.endswith("cropflip-views"):
            lines += ["An earlier run, kept for the record: its views had only the fine-tune's crop + flip (before "
                      "simclr.view_augment) and its pretraining ran with torch's default threads on a loaded CPU "
                      "(before ThreadShare), so 7 epochs instead of 30.", ""]
        lines += [
                  f"Split 80/20 stratified (seed 0): {c['sizes']['unlabelled']} training images (all used unlabelled "
                  f"for SimCLR), {c['sizes']['labelled']} of them labelled (20% of those for validation), "
                  f"{c['sizes']['test']} test. Encoder cnn [16, 32, 64] at 32x32; SimCLR: {p['epochs_run']} epochs "
                  f"in {p['seconds']:.0f} s of training ({p['stop_reason']}), temperature {p['temperature']}, "
                  f"batch 256, views from the project's augmentations {p['augment']['image']}. Fine-tune: 30 epochs, "
                  "AdamW 3e-3, cosine, crop+flip augmentation, best validation-accuracy epoch kept.", "",
                  "| test metric | scratch | SimCLR-pretrained | gain | runs |", "|---|---|---|---|---|",
                  _row("accuracy", c["accuracy"]), ""]
        if "frozen_gain" in c["accuracy"]:
            lines += ["Probe (encoder learning rate 1e-9, so its weights stay as initialised; batch-norm statistics "
                      "still adapt; combiner and head train):", "",
                      "| test metric | frozen random encoder | frozen SimCLR encoder | gain | runs |",
                      "|---|---|---|---|---|",
                      _row("accuracy", c["accuracy"], "frozen random", "frozen pretrained", "frozen_gain"), ""]
        if "linear_probe" in c:
            lp = c["linear_probe"]
            lines += [f"Linear probe (logistic regression on the frozen encoder's pooled features, eval mode, 800 -> "
                      f"2,000 test): random-init encoder {lp['random']:.4f}, SimCLR encoder {lp['simclr']:.4f}.", ""]
        lines += [
                  "SimCLR validation NT-Xent per epoch: "
                  + ", ".join(f"{h['val_loss']:.3f}" for h in p["history"] or []), ""]
    if "adult" in result:
        a = result["adult"]
        p = a["pretraining"]
        lines += ["## adult, 1% / 10% labels, SCARF", "",
                  f"SCARF on all 32,561 adult.data rows without income: {p['epochs_run']} epochs in "
                  f"{p['seconds']:.0f} s ({p['stop_reason']}), corruption {p['corruption']}, temperature "
                  f"{p['temperature']}; network: default encoders, combiner [256, 256]. Fine-tune up to 60 epochs, "
                  "early stopping on validation loss (patience 8); test = official adult.test (16,281 rows).", "",
                  "| labels | test metric | scratch | SCARF-pretrained | gain | runs |", "|---|---|---|---|---|---|"]
        for fraction, f in a["fractions"].items():
            for metric in ("accuracy", "roc_auc"):
                lines.append(f"| {float(fraction):.0%} ({f['labelled']} rows) " + _row(metric, f[metric]))
        lines.append("")
    return "\n".join(lines) + "\n"


def merged(result: dict) -> dict:
    """Earlier sections of the results file this run did not redo are kept (several pretraining budgets)."""
    path = RESULTS / "pretrain_contrastive.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    if "cifar" in old:  # the first run: views were the fine-tune's crop + flip only (before simclr.view_augment)
        old["cifar-12min-cropflip-views"] = old.pop("cifar")
    keep = {k: v for k, v in old.items() if (k.startswith("cifar") or k == "adult") and k not in result}
    return {**result, **keep}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--simclr-minutes", type=float, default=12.0)
    parser.add_argument("--skip-cifar", action="store_true")
    parser.add_argument("--skip-adult", action="store_true")
    parser.add_argument("--probe", action="store_true", help="also frozen-encoder arms (random vs SimCLR)")
    args = parser.parse_args()
    os.environ.setdefault("LOOPML_CACHE_DIR", str(CACHE / "tensors"))
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").exists() else "?"
    result: dict = {"seeds": args.seeds, "load_before": load}
    if not args.skip_cifar:
        result[f"cifar-{args.simclr_minutes:g}min"] = cifar(args.seeds, args.simclr_minutes, args.probe)
        result = merged(result)
        write_result("pretrain_contrastive", result)
        (RESULTS / "pretrain_contrastive.md").write_text(markdown(result, load))
    if not args.skip_adult:
        result["adult"] = adult(args.seeds)
    result = merged(result)
    write_result("pretrain_contrastive", result)
    (RESULTS / "pretrain_contrastive.md").write_text(markdown(result, load))
    print(markdown(result, load))


if __name__ == "__main__":
    main()
