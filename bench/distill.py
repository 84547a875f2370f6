"""Distillation (issue 15): fine-tuned MiniLM teacher -> bag / BiLSTM students on ag_news_test.

    python -m bench.distill [--teacher minilm|linear] [--students bag bilstm] [--grid 2:0.5 4:0.1 ...]
                            [--augment 0] [--epochs N] [--quick]

The teacher is bench/pretrained_text's fine-tuned model (all-MiniLM-L6-v2, top 2 layers trained,
lr 1e-4, max_length 48, 2 epochs, batch 32; default split: stratified, test 0.2; seed 42), trained
once from a parquet file and kept in bench/.cache/distill/ (its scores per row are cached there too:
on this CPU the teacher needs ~0.05-0.1 s a row). Per student (loopml's ``bag`` / ``bilstm`` text
encoders, default settings otherwise):

- scratch: the same student config trained on the hard labels alone (same splits, same seed);
- distilled: ``loopml.compress.distill.fit_student`` for each (temperature, alpha) of ``--grid``;
  the one with the best **validation** accuracy is kept (test accuracy is reported for every run,
  it decides nothing);
- the kept student goes through ``write_student`` (what ``loopml compress --distill`` runs): the
  trade-off table, teacher vs student, on the teacher's test split, 1 thread, interleaved.

``--augment N``: N extra unlabelled rows made from the teacher's *training* texts only (random word
dropout and n-gram windows, as in Tang et al. 2019), labelled by the teacher: no validation or test
text is used. Acceptance (issue 15): a student >= 0.89 test accuracy at >= 10x lower batch-1 latency.
``--inits teacher-tokens teacher-input``: one student per init (``loopml compress --student-init``:
token embeddings from the teacher, its tokenizer; loopml/compress/static_embeddings.py), each with the
whole grid; ``--dim D``: the students' embedding width (the init's PCA width; default: 256 with a teacher
init, loopml's 64 without). Alpha 1 in the grid is the hard-label run of the same student.
``--teacher linear``: a cheap non-network teacher (loopml's TF-IDF + linear SVM learner) on the same
split, for the "any loopml model" path; results then go to distill_linear.json / .md.
``--seeds 42 1 2``: the whole grid (and scratch) once per student training seed; the accuracy acceptance is
then the mean over the seeds of the validation-chosen student's test accuracy (one seed's pick on 760
validation rows moves the test figure by up to a point).
Results: bench/results/distill.json and distill.md.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import loopml  # noqa: E402
from bench import realdata  # noqa: E402
from bench.common import RESULTS, write_result  # noqa: E402

CACHE = Path(__file__).resolve().parent / ".cache" / "distill"
TEACHER_ENCODER = {"type": "pretrained", "trainable": "top", "lr": 1e-4, "top_layers": 2}
ACCEPT = {"accuracy": 0.89, "faster_batch1": 10.0}
DEFAULT_GRID = ["2:0.5", "4:0.1", "4:0.5", "1:0.1"]


TEACHERS = {
    "minilm": {"features": {"text": {"type": "text", "encoder": TEACHER_ENCODER, "max_length": 48}},
               "training": {"seed": 42, "epochs": 2, "batch_size": 32}},
    # a cheap non-network teacher (TF-IDF + calibrated linear SVM, ~0.895 in loopml/learners/linear.py's notes)
    "linear": {"learner": {"type": "linear", "model": "svm"}, "training": {"seed": 42}},
}
TEACHER_NAMES = {"minilm": "all-MiniLM-L6-v2 fine-tuned (top 2 layers, lr 1e-4, max_length 48, 2 epochs, batch 32)",
                 "linear": "loopml linear learner (TF-IDF, calibrated linear SVM, C=1)"}


def teacher(frame: pd.DataFrame, kind: str = "minilm") -> tuple[Path, float | None]:
    """The teacher on ag_news_test (default split, seed 42), trained once from a file and kept in CACHE."""
    folder = CACHE / ("teacher" if kind == "minilm" else f"teacher-{kind}")
    if (folder / "manifest.json").is_file():
        return folder, None
    # the path, not the frame: the teacher's split record points at rows of this file
    CACHE.mkdir(parents=True, exist_ok=True)
    data = CACHE / "ag_news_test.parquet"
    if not data.is_file():
        frame.to_parquet(data, index=False)
    start = time.perf_counter()
    model = loopml.Model(target="label", **TEACHERS[kind])
    model.fit(str(data), progress=False, cache_dir=False)
    model.save(folder)
    seconds = time.perf_counter() - start
    print(f"teacher trained in {seconds:.0f}s: test accuracy {model.metrics['test']['accuracy']:.4f}", flush=True)
    return folder, seconds


def cache_scores(model, path: Path) -> dict:
    """Memoise ``model.learner.predict_scores`` per row (keyed by the row's tensors), kept in ``path`` (npz)."""
    learner, real = model.learner, model.learner.predict_scores
    cache: dict[str, np.ndarray] = {}
    if path.is_file():
        with np.load(path, allow_pickle=False) as saved:
            cache.update(zip(saved["keys"].tolist(), saved["scores"], strict=True))
    stats = {"computed_rows": 0, "seconds": 0.0}

    def keys_of(x: dict) -> list[str]:
        n = len(next(iter(x.values())))
        return [hashlib.sha1(b"".join(x[c][i].numpy().tobytes() for c in sorted(x))).hexdigest() for i in range(n)]

    def predict_scores(x: dict) -> np.ndarray:
        keys = keys_of(x)
        missing = sorted({i for i, k in enumerate(keys) if k not in cache})
        if missing:
            start = time.perf_counter()
            index = torch.as_tensor(missing)
            got = real({c: t[index] for c, t in x.items()})
            stats["computed_rows"] += len(missing)
            stats["seconds"] += time.perf_counter() - start
            cache.update((keys[i], got[j]) for j, i in enumerate(missing))
            np.savez(path, keys=np.array(list(cache)), scores=np.stack(list(cache.values())))
        return np.stack([cache[k] for k in keys])

    learner.predict_scores = predict_scores
    return stats


def augment(train: pd.DataFrame, n: int, seed: int = 0) -> pd.DataFrame:
    """``n`` new texts from the training texts: word dropout (p 0.15) and/or a random window of 50-100% of the words."""
    rng = np.random.default_rng(seed)
    texts = train["text"].astype(str).tolist()
    out = []
    for _ in range(n):
        words = texts[rng.integers(len(texts))].split()
        if rng.random() < 0.5:
            width = max(3, int(len(words) * rng.uniform(0.5, 1.0)))
            begin = rng.integers(0, max(1, len(words) - width + 1))
            words = words[begin : begin + width]
        if rng.random() < 0.7:
            kept = [w for w in words if rng.random() >= 0.15]
            words = kept or words
        out.append(" ".join(words))
    return pd.DataFrame({"text": out})


def accuracy(model, split: str) -> float:
    return float(model.metrics[split]["accuracy"])


def scratch_run(kind: str, teacher_model, frames: dict, training: dict) -> dict:
    """The same student config trained on the hard labels alone (no teacher), on the same splits."""
    from loopml.compress.distill import student_config

    base = student_config(kind, teacher_model, training=training)
    start = time.perf_counter()
    scratch_config = base.model_copy(update={"training": base.training.model_copy(update={"distill": None})})
    scratch = loopml.Model(scratch_config).fit(frames["train"], validation=frames["validation"], test=frames["test"],
                                               progress=False, cache_dir=False)
    out = {"validation_accuracy": accuracy(scratch, "validation"), "test_accuracy": accuracy(scratch, "test"),
           "epochs_run": scratch.info["training"]["epochs_run"], "seconds": time.perf_counter() - start}
    print(f"{kind} scratch: validation {out['validation_accuracy']:.4f}, test {out['test_accuracy']:.4f} "
          f"({out['seconds']:.0f}s)", flush=True)
    return out


def with_width(config, dim: int | None):
    """``config`` with its text encoders' embedding width set to ``dim`` (None: as it is)."""
    from loopml.compress.static_embeddings import WIDTH_SETTING

    if dim is None:
        return config
    features = {c: f.model_copy(update={"encoder": f.encoder.model_copy(update={WIDTH_SETTING[f.encoder.type]: dim})})
                if getattr(getattr(f, "encoder", None), "type", None) in WIDTH_SETTING else f
                for c, f in config.features.items()}
    return config.model_copy(update={"features": features})


def run_student(kind: str, teacher_model, frames: dict, grid: list[tuple[float, float]], extra, training: dict,
                scratch_too: bool = True, init: str = "random", dim: int | None = None) -> dict:
    from loopml.compress.distill import fit_student, student_config

    entry: dict = {"runs": [], "init": init, "dim": dim}
    if scratch_too:
        entry["scratch"] = scratch_run(kind, teacher_model, frames, training)
    best = None
    label = kind if init == "random" else f"{kind}+{init}"
    for temperature, alpha in grid:
        start = time.perf_counter()
        config = with_width(student_config(kind, teacher_model, temperature, alpha, training, init), dim)
        fitted = fit_student(teacher_model, config, frames, extra, init=init)
        run = {"temperature": temperature, "alpha": alpha, "validation_accuracy": accuracy(fitted, "validation"),
               "test_accuracy": accuracy(fitted, "test"), "epochs_run": fitted.info["training"]["epochs_run"],
               "seconds": time.perf_counter() - start}
        entry["runs"].append(run)
        print(f"{label} distilled T={temperature:g} alpha={alpha:g}: validation {run['validation_accuracy']:.4f}, test "
              f"{run['test_accuracy']:.4f} ({run['seconds']:.0f}s, {run['epochs_run']} epochs)", flush=True)
        if best is None or run["validation_accuracy"] > best[0]["validation_accuracy"]:
            best = (run, fitted)
    entry["chosen"] = {k: best[0][k] for k in ("temperature", "alpha")}
    entry["chosen_by"] = "validation accuracy"
    return entry | {"_fitted": best[1]}


def seed_summary(seed: int, entry: dict) -> dict:
    """One seed's scratch and validation-chosen distilled student."""
    chosen = next(r for r in entry["runs"] if (r["temperature"], r["alpha"]) ==
                  (entry["chosen"]["temperature"], entry["chosen"]["alpha"]))
    return {"seed": seed, "scratch_test": entry.get("scratch", {}).get("test_accuracy"), **entry["chosen"],
            "chosen_validation": chosen["validation_accuracy"], "chosen_test": chosen["test_accuracy"]}


def markdown(result: dict) -> str:
    t = result["teacher"]
    out = [f"# distill: {t['model']} teacher -> small students on ag_news_test{' (QUICK)' if result['quick'] else ''}",
           "", f"Teacher test accuracy {t['test_accuracy']:.4f} (validation {t['validation_accuracy']:.4f}); "
           f"{result['sizes']['train']} training rows labelled by the teacher"
           + (f" + {result['augment']} augmented rows from them" if result["augment"] else "") + ". "
           "Settings chosen on validation accuracy only.", "",
           "| student | run | T | alpha | validation acc | test acc | epochs |", "|---|---|---:|---:|---:|---:|---:|"]
    for kind, s in result["students"].items():
        if "scratch" in s:
            out.append(f"| {kind} | scratch (hard labels) | | | {s['scratch']['validation_accuracy']:.4f} | "
                       f"{s['scratch']['test_accuracy']:.4f} | {s['scratch']['epochs_run']} |")
        for r in s["runs"]:
            chosen = " **(chosen)**" if (r["temperature"], r["alpha"]) == (s["chosen"]["temperature"], s["chosen"]["alpha"]) \
                else ""
            out.append(f"| {kind} | distilled{chosen} | {r['temperature']:g} | {r['alpha']:g} | "
                       f"{r['validation_accuracy']:.4f} | {r['test_accuracy']:.4f} | {r['epochs_run']} |")
    out += ["", "Trade-off of each chosen student (`write_student`, as `loopml compress --distill`): 1 thread, "
            "interleaved, model call alone on rows each model preprocessed itself.", "",
            "| model | network MB | p50 ms b1 | p99 ms b1 | p50 ms b64 | p99 ms b64 | test accuracy |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for kind, s in result["students"].items():
        rows = s["tradeoff"]["rows"]
        for r in rows if kind == next(iter(result["students"])) else rows[1:]:
            out.append(f"| {r['model']} | {r['network_bytes'] / 1e6:.1f} | {r['p50_ms_batch1']:.2f} | "
                       f"{r['p99_ms_batch1']:.2f} | {r['p50_ms_batch64']:.1f} | {r['p99_ms_batch64']:.1f} | {r['value']:.4f} |")
    out.append("")
    for kind, s in result["students"].items():
        if "seeds" in s:
            tests = [r["chosen_test"] for r in s["seeds"]]
            scratch = [r["scratch_test"] for r in s["seeds"] if r["scratch_test"] is not None]
            out.append(f"- {kind}, seeds {', '.join(str(r['seed']) for r in s['seeds'])}: validation-chosen distilled "
                       f"test accuracy " + ", ".join(f"{t:.4f}" for t in tests) + f" (mean {np.mean(tests):.4f}, std "
                       f"{np.std(tests):.4f})" + (f"; scratch mean {np.mean(scratch):.4f}" if scratch else ""))
    for kind, s in result["students"].items():
        q = s["tradeoff"]["ratios"]
        out.append(f"- {kind}: {q['faster_batch1']:.1f}x faster at batch 1, {q['faster_batch64']:.1f}x at batch 64, "
                   f"{q['smaller_network']:.1f}x smaller network, accuracy {100 * q['accuracy_change']:+.2f} points vs the "
                   f"teacher; acceptance: " + ", ".join(f"{k} {'pass' if v else 'FAIL'}" for k, v in s["acceptance"].items()))
    return "\n".join(out) + "\n"


def parse_grid(values: list[str]) -> list[tuple[float, float]]:
    return [(float(v.split(":")[0]), float(v.split(":")[1])) for v in values]


def main() -> None:
    from loopml.compress.distill import write_student
    from loopml.compress.quantize import original_splits

    parser = argparse.ArgumentParser()
    parser.add_argument("--teacher-only", action="store_true", help="train (or find) the cached teacher, nothing else")
    parser.add_argument("--teacher", default="minilm", choices=list(TEACHERS))
    parser.add_argument("--students", nargs="+", default=["bag", "bilstm"], choices=["bag", "bilstm", "mlp"])
    parser.add_argument("--grid", nargs="+", default=DEFAULT_GRID, help="temperature:alpha pairs to try")
    parser.add_argument("--augment", type=int, default=0, help="augmented unlabelled rows from the training texts")
    parser.add_argument("--epochs", type=int, default=None, help="the students' epochs (default: loopml's)")
    parser.add_argument("--quick", action="store_true", help="few latency rounds: a smoke run")
    parser.add_argument("--no-scratch", action="store_true", help="skip the scratch (hard labels only) students")
    parser.add_argument("--tag", default="", help="appended to the results' file names (distill_TAG.json)")
    parser.add_argument("--inits", nargs="+", default=["random"],
                        choices=["random", "teacher-tokens", "teacher-input"],
                        help="where the students' token embeddings start (loopml compress --student-init)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="the students' training seeds (default: the teacher's, 42); acceptance: the mean over them")
    parser.add_argument("--dim", type=int, default=None, help="the students' embedding width (default: loopml's)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if not realdata.available("ag_news_test"):
        print("ag_news_test: not in ../shared/datasets, skipped")
        return
    frame = realdata.ag_news()
    folder, teacher_seconds = teacher(frame, args.teacher)
    if args.teacher_only:
        return
    teacher_model = loopml.load(folder)
    stats = cache_scores(teacher_model, CACHE / "teacher_scores.npz") if args.teacher == "minilm" else {}
    frames = original_splits(teacher_model, None, None, None)
    extra = augment(frames["train"], args.augment) if args.augment else None
    training = {"epochs": args.epochs} if args.epochs else {}
    rounds = {1: 20, 64: 3} if args.quick else {1: 100, 64: 8}
    name = ("distill" if args.teacher == "minilm" else f"distill_{args.teacher}") + (f"_{args.tag}" if args.tag else "")
    result: dict = {
        "quick": args.quick, "augment": args.augment, "grid": args.grid, "student_training": training,
        "sizes": {k: len(v) for k, v in frames.items()},
        "teacher": {"kind": args.teacher, "model": TEACHER_NAMES[args.teacher],
                    "test_accuracy": accuracy(teacher_model, "test"),
                    "validation_accuracy": accuracy(teacher_model, "validation"), "fit_seconds": teacher_seconds},
        "dim": args.dim, "inits": args.inits,
        "split": "default (stratified, test 0.2), seed 42", "rounds": {str(k): v for k, v in rounds.items()},
        "students": {}, "acceptance_thresholds": ACCEPT,
    }
    for kind, init in [(k, i) for k in args.students for i in args.inits]:
        label = kind if init == "random" else f"{kind}+{init}"
        per_seed = [run_student(kind, teacher_model, frames, parse_grid(args.grid), extra,
                                training | ({"seed": seed} if seed is not None else {}),
                                not args.no_scratch and init == args.inits[0], init, args.dim)
                    for seed in (args.seeds or [None])]
        entry = per_seed[0]  # its chosen student goes through the trade-off: latency and size do not depend on the seed
        for other in per_seed[1:]:
            other.pop("_fitted")
        if args.seeds:
            entry["seeds"] = [seed_summary(seed, e) for seed, e in zip(args.seeds, per_seed, strict=True)]
        fitted = entry.pop("_fitted")
        done = write_student(teacher_model, folder, {"folder": "ag_news_test fine-tuned MiniLM"}, fitted, label,
                             CACHE / f"student-{label}-from-{args.teacher}", frames, force=True, rounds=rounds, threads=1)
        entry["tradeoff"] = done.table
        q, student_row = done.table["ratios"], done.table["rows"][1]
        chosen_test = np.mean([r["chosen_test"] for r in entry["seeds"]]) if args.seeds else student_row["value"]
        entry["acceptance"] = {"accuracy": bool(chosen_test >= ACCEPT["accuracy"]),
                               "faster_batch1": q["faster_batch1"] >= ACCEPT["faster_batch1"]}
        result["students"][label] = entry
        result["teacher_scoring"] = dict(stats)
        write_result(name, result)
        (RESULTS / f"{name}.md").write_text(markdown(result))
    print(markdown(result))
    print("results:", RESULTS / f"{name}.json")


if __name__ == "__main__":
    main()
