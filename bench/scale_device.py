"""bench/scale.py's ``device`` section: the device seam end to end on ``--device`` (auto: CUDA when
there is one), on synthetic data so it needs no dataset and travels to a GPU machine with the repo.

A tabular MLP, a small ResNet with every image augmentation on, and a text transformer, each trained
in fp32, bf16 and (CUDA only) fp16: steady epoch time, validation loss, where the weights are, the
predictions' dtype; resume from a checkpoint against an uninterrupted run (bit-identical weights on
the same device); and the serving runner on the device against the CPU (largest score difference).

    python -m bench.scale --only device [--device cuda] [--epochs 4]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile


def synthetic_cases(rows: int) -> list[tuple[str, dict, object]]:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    x1, x2, color = rng.normal(size=rows), rng.normal(size=rows), rng.choice(["red", "green", "blue"], size=rows)
    label = np.where(x1 - x2 + (color == "red") > 0, "pos", "neg")
    tabular = pd.DataFrame({"x1": x1, "x2": x2, "color": color, "label": label})
    bright = rng.integers(0, 2, size=rows)  # an image's class is its brightness
    images = [(rng.integers(0, 128, size=(16, 16)) + 100 * b).astype(np.uint8) for b in bright]
    words = np.where(label == "pos", "good fine great", "bad poor awful")
    text = pd.DataFrame({"text": [f"{w} item {i % 11} of the lot" for i, w in enumerate(words)], "label": label})
    augment = {"crop_padding": 2, "flip": True, "rotation": 10.0, "color_jitter": 0.2, "cutout": 4}
    image = {"type": "image", "augment": augment, "encoder": {"type": "resnet", "channels": [16, 32]}}
    transformer = {"type": "text", "encoder": {"type": "transformer", "dim": 32, "heads": 2, "layers": 1,
                                               "feedforward": 64}}
    return [("tabular_mlp", {"target": "label"}, tabular),
            ("image_resnet_augmented", {"target": "label", "features": {"image": image}},
             pd.DataFrame({"image": images, "label": np.where(bright == 1, "bright", "dark")})),
            ("text_transformer", {"target": "label", "features": {"text": transformer}}, text)]


def _train(prepared, config, device: str, precision: str, epochs: int, checkpoint=None, resume=None):
    import torch

    from loopml.learners.network import build_network
    from loopml.train.callbacks import Checkpoint, History
    from loopml.train.determinism import deterministic_algorithms
    from loopml.train.trainer import Trainer

    deterministic_algorithms()
    training = config.training.model_copy(update={"device": device, "precision": precision, "epochs": epochs})
    torch.manual_seed(training.seed)
    network = build_network(prepared.preprocessor, config)
    callbacks = [History()] + ([Checkpoint(checkpoint)] if checkpoint else [])
    trainer = Trainer(network, training, callbacks)
    history = trainer.fit(prepared.splits["train"], prepared.splits["validation"], resume_from=resume)
    return trainer, history


def section_device(args: argparse.Namespace) -> dict:
    import numpy as np
    import torch

    import loopml
    from loopml.config import load_config
    from loopml.prepare import prepare
    from loopml.serve.runner import make_runner
    from loopml.train.device import resolve_device

    device = resolve_device(args.device)
    torch.set_num_threads(args.threads)
    precisions = ["fp32", "bf16"] + (["fp16"] if device.type == "cuda" else [])
    out: dict = {"device": str(device), "epochs": args.epochs, "models": {},
                 "name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}
    cases = synthetic_cases(args.rows_synthetic)
    for name, raw, frame in cases:
        config = load_config({**raw, "training": {"early_stopping": {"patience": 0}}})
        prepared = prepare(config, frame, cache_dir=False)
        runs = {}
        for precision in precisions:
            trainer, history = _train(prepared, config, str(device), precision, args.epochs)
            scores = trainer.predict(prepared.splits["test"].inputs)
            times = [h["time"] for h in history]
            runs[precision] = {"epoch_s": [round(t, 4) for t in times],
                               "steady_epoch_s": statistics.median(times[1:] or times),
                               "val_loss": history[-1]["val_loss"],
                               "weights_on": str(next(trainer.model.parameters()).device),
                               "predictions": f"{scores.dtype} on {scores.device}, finite {bool(scores.isfinite().all())}"}
        half = max(1, args.epochs // 2)
        with tempfile.TemporaryDirectory() as tmp:  # half the epochs, then resume the rest == all straight
            straight, _ = _train(prepared, config, str(device), "fp32", 2 * half)
            _train(prepared, config, str(device), "fp32", half, checkpoint=tmp)
            resumed, _ = _train(prepared, config, str(device), "fp32", 2 * half, checkpoint=tmp, resume=tmp)
        identical = all(torch.equal(a, b) for a, b in zip(straight.model.state_dict().values(),
                                                          resumed.model.state_dict().values(), strict=True))
        out["models"][name] = {"precisions": runs, "resume_bit_identical": identical,
                               "bf16_speedup_over_fp32": runs["fp32"]["steady_epoch_s"] / runs["bf16"]["steady_epoch_s"]}
        print(f"{name}: " + ", ".join(f"{p} {r['steady_epoch_s']:.3f} s/epoch" for p, r in runs.items())
              + f", resume identical {identical}", flush=True)
    _, raw, frame = cases[0]
    with tempfile.TemporaryDirectory() as tmp:  # the serving runner on the device against the CPU
        model = loopml.Model(**raw, training={"epochs": 2, "device": str(device)})
        folder = model.fit(frame, progress=False, cache_dir=False).save(f"{tmp}/model")
        records = frame.drop(columns=["label"]).head(256).to_dict(orient="records")
        cpu, on_device = make_runner(loopml.load(folder), device="cpu"), make_runner(loopml.load(folder), device=str(device))
        a, b = (np.asarray(r.outputs(r.prepare(records))) for r in (cpu, on_device))
    out["serving"] = {"runner_device": str(on_device.device), "max_abs_score_diff_vs_cpu": float(np.abs(a - b).max())}
    return out


def device_markdown(result: dict) -> str:
    lines = [f"# The device seam on {result['device']} ({result['name']}): bench/scale.py --only device", "",
             f"Synthetic data, {result['epochs']} epochs per training; steady = median epoch after the first.", "",
             "| model | precision | steady epoch s | val loss | weights on | predictions |", "|---|---|---|---|---|---|"]
    for name, m in result["models"].items():
        for precision, r in m["precisions"].items():
            lines.append(f"| {name} | {precision} | {r['steady_epoch_s']:.3f} | {r['val_loss']:.4f} | "
                         f"{r['weights_on']} | {r['predictions']} |")
    lines.append("")
    for name, m in result["models"].items():
        lines.append(f"- {name}: resume bit-identical {m['resume_bit_identical']}; "
                     f"bf16 steady speed-up over fp32 x{m['bf16_speedup_over_fp32']:.2f}")
    serving = result["serving"]
    lines.append(f"- serving runner on {serving['runner_device']}: largest score difference vs the CPU "
                 f"{serving['max_abs_score_diff_vs_cpu']:.2e}")
    return "\n".join(lines) + "\n"
