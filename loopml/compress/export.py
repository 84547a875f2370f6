"""``loopml export``: a network model as ONNX or TorchScript, its fitted preprocessing as plain JSON and a
standalone example (``predict_onnx.py``: numpy + onnxruntime, + tokenizers for non-tfidf text) that reproduces
loopml's predictions on a CSV without importing loopml.

The graph is the one ``loopml serve --backend onnx`` runs (``serve/onnx.py``): every encoder, the
combiner and the head, one input per column, dynamic batch. ``preprocessing.json`` says, per column,
how a CSV cell becomes that input (the feature type's fitted state, keyed as the script reads it) and
how the scores decode to a prediction. Other learners (trees, linear, ensembles) are not networks:
they are refused before anything is written.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from loopml.errors import LoopmlError, did_you_mean
from loopml.files import replace_folder

#: --format -> the file the network is written to
FORMATS = {"onnx": "model.onnx", "torchscript": "model.pt"}
#: --format -> the name the standalone example gets in the export
SCRIPTS = {"onnx": "predict_onnx.py", "torchscript": "predict_torchscript.py"}
SPEC_FORMAT = "loopml-export"
SPEC_VERSION = 1
TEMPLATE = Path(__file__).with_name("standalone") / "predict.py"
#: what pandas reads as missing in a CSV by default (pandas._libs.parsers.STR_NA_VALUES), before data.na_values
PANDAS_NA = ["", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>", "N/A",
             "NA", "NULL", "NaN", "None", "n/a", "nan", "null"]
#: the rows the export checks the written network against loopml's on
CHECK_ROWS = 8


@dataclass
class Export:
    """What ``export_model`` wrote: the folder, its files, the parity check and what the example cannot do."""

    folder: Path
    files: list[str]
    max_diff: float
    notes: list[str] = field(default_factory=list)


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise LoopmlError(f"unknown export format '{fmt}'{did_you_mean(fmt, FORMATS)}; supported: {', '.join(FORMATS)}")
    return fmt


def check_output(output: str | os.PathLike, force: bool) -> Path:
    """The export folder: absent, empty, or (with ``force``) an earlier export; never anything else."""
    out = Path(output).expanduser()
    if out.exists() and not out.is_dir():
        raise LoopmlError(f"output {output} exists and is not a folder; choose another -o")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise LoopmlError(f"output folder {output} exists and is not empty; choose another -o or pass --force")
        if not _is_export(out):
            raise LoopmlError(f"refusing to replace {output}: it is not an earlier loopml export "
                              "(no preprocessing.json written by `loopml export`); choose another -o")
    return out


def _is_export(folder: Path) -> bool:
    try:
        spec = json.loads((folder / "preprocessing.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(spec, dict) and spec.get("format") == SPEC_FORMAT


def check_exportable(model) -> None:
    if getattr(model, "network", None) is None:
        from loopml.serve.runner import learner_name

        raise LoopmlError(f"loopml export supports network models only (learner 'network'); this model's learner is "
                          f"'{learner_name(model)}' (trees, linear and ensemble learners have no network to export)")


def export_model(model, output: str | os.PathLike, fmt: str = "onnx", force: bool = False) -> Export:
    """Write the export folder atomically (a hidden sibling renamed into place); returns what it holds."""
    fmt = check_format(fmt)
    out = check_output(output, force)
    check_exportable(model)
    spec, tokenizers, notes = preprocessing_spec(model)
    final = out.resolve()
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        network_file = tmp / FORMATS[fmt]
        if fmt == "onnx":
            from loopml.serve.onnx import export_onnx

            with warnings.catch_warnings():  # the tracer's notes on pretrained encoders are not the user's concern
                warnings.simplefilter("ignore")
                export_onnx(model, network_file)
        else:
            trace_torchscript(model, network_file)
        spec["network"] = {"file": FORMATS[fmt], "format": fmt}
        (tmp / "preprocessing.json").write_text(json.dumps(spec, indent=1), encoding="utf-8")
        for name, text in tokenizers.items():
            (tmp / name).write_text(text, encoding="utf-8")
        shutil.copyfile(TEMPLATE, tmp / SCRIPTS[fmt])
        max_diff = _check_parity(model, network_file, fmt)
        files = sorted(p.name for p in tmp.iterdir())
        replace_folder(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Export(final, files, max_diff, notes)


# -- the network -------------------------------------------------------------------------------------
def _example_tensors(model, rows: int) -> tuple:
    from loopml.serve.onnx import model_example

    columns = list(model.preprocessor.features)
    example = model.preprocessor.transform(model_example(model, rows))
    return tuple(example[c] for c in columns)


def trace_torchscript(model, path: Path) -> None:
    """``torch.jit.trace`` of the network taking the ONNX graph's inputs (one tensor per column, in order)."""
    import torch

    from loopml.serve.onnx import _Positional

    network = _Positional(model.network, list(model.preprocessor.features)).eval()
    args = _example_tensors(model, 2)
    try:
        with warnings.catch_warnings(), torch.no_grad():  # TracerWarnings (shape-dependent branches) and deprecations
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(network, args, check_trace=False)
            torch.jit.save(traced, str(path))
    except (RuntimeError, TypeError, ValueError) as e:  # the tracer's failures: unsupported ops, dict outputs
        raise LoopmlError(f"this model cannot be traced to TorchScript ({type(e).__name__}: {str(e)[:200]}); "
                          "try --format onnx") from None


def network_outputs(path: Path, fmt: str, tensors: tuple) -> np.ndarray:
    """The written network's scores for positional input tensors (ONNX Runtime or the TorchScript module)."""
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        return session.run(None, {n: t.numpy() for n, t in zip(names, tensors, strict=True)})[0]
    import torch

    with warnings.catch_warnings():  # torch.jit is deprecated in favour of torch.export, which writes no .pt module
        warnings.simplefilter("ignore", DeprecationWarning)
        module = torch.jit.load(str(path))
    with torch.no_grad():
        return module(*tensors).numpy()


def _check_parity(model, path: Path, fmt: str) -> float:
    tensors = _example_tensors(model, CHECK_ROWS)
    columns = list(model.preprocessor.features)
    expected = np.asarray(model.learner.predict_scores(dict(zip(columns, tensors, strict=True))))
    got = network_outputs(path, fmt, tensors)
    return float(np.abs(got.reshape(expected.shape) - expected).max()) if expected.size else 0.0


# -- the preprocessing, as the standalone example reads it ------------------------------------------------
def preprocessing_spec(model) -> tuple[dict, dict[str, str], list[str]]:
    """(preprocessing.json, tokenizer files by name, notes on columns the standalone example cannot read)."""
    pre, data = model.preprocessor, model.config.data
    columns, tokenizers, notes = [], {}, []
    for i, (col, feature) in enumerate(pre.features.items()):
        kind = feature.config.type
        entry = {"name": col, "type": kind, "input": f"input_{i}",
                 "dtype": "int64" if kind in ("category", "text") else "float32"}
        reason = None
        if kind == "number":
            s = feature.state
            entry.update(fill=s["fill"], method=s["method"], center=s["center"], scale=s["scale"],
                         edges=s.get("edges", []), indicator=s["indicator"])
        elif kind == "category":
            entry.update(_category_spec(feature))
        elif kind == "binary":
            entry.update(_binary_spec(feature))
        elif kind == "date":
            entry.update({k: feature.state[k] for k in ("has_time", "ordinal_mean", "ordinal_std", "year_mean", "year_std")})
        elif kind == "text":
            info = feature.state.get("pretrained")
            if "tfidf" in feature.state:  # (term id, weight) pairs [N, 2, max_length]: the example counts the terms
                entry.update(dtype="float32", tfidf=feature.state["tfidf"], max_length=feature.state["max_length"])
            elif info is not None and info["output"] == "embeddings":
                reason = f"a frozen pretrained text encoder: the network takes its sentence embeddings [N, {info['hidden_size']}]"
                entry["dtype"] = "float32"
            else:
                name = f"tokenizer_{i}.json"
                tokenizers[name] = _tokenizer_json(feature)
                entry.update(tokenizer=name, max_length=feature.state["max_length"])
        elif kind == "image":  # decoded as ImageFeature._decode does; the graph normalises (and flips, for tta)
            s = feature.state
            entry.update(dtype="uint8", size=list(s["size"]), channels=s["channels"], resize=feature.config.resize)
        else:
            reason = f"{kind} values: the network takes their decoded tensor"
        if reason is not None:
            entry["standalone"] = False
            notes.append(f"column '{col}' ({reason})")
        columns.append(entry)
    target = pre.target
    decode: dict = {"column": target.column, "kind": target.kind}
    if target.kind == "number":
        decode.update(mean=target.state["mean"], std=target.state["std"])
    else:
        decode.update(classes=target.classes, threshold=target.state.get("threshold"))
    delimiter = (data.delimiter or ",").encode().decode("unicode_escape")
    spec = {
        "format": SPEC_FORMAT, "version": SPEC_VERSION,
        "csv": {"delimiter": delimiter, "missing": sorted(set(PANDAS_NA) | set(data.na_values)),
                "skip_initial_space": data.skip_initial_space, "encoding": data.encoding},
        "columns": columns, "target": decode, "output": "scores",
    }
    return spec, tokenizers, notes


def _category_spec(feature) -> dict:
    from loopml.features.base import canonical_key
    from loopml.features.category import UNKNOWN, fill_key

    index = feature._lookup()  # canonical key -> id, as transform looks values up
    mode = feature.state["mode"]
    missing = fill_key(feature.config, None if mode is None else canonical_key(mode))
    return {"index": index, "missing_id": index.get(missing, UNKNOWN), "unknown_id": UNKNOWN}


def _binary_spec(feature) -> dict:
    from loopml.features.base import canonical_key

    s = feature.state
    return {"values": sorted({canonical_key(v) for v in s["values"]}), "positive": canonical_key(s["positive"]),
            "fill": float(s["fill"])}


def _tokenizer_json(feature) -> str:
    """The column's tokenizer with its truncation and padding set, so ``Tokenizer.from_file`` gives the ids."""
    from tokenizers import Tokenizer

    length = feature.state["max_length"]
    if "pretrained" in feature.state:
        tok = Tokenizer.from_str(feature._pretrained_tokenizer().to_str())
        pad = int(feature.state["pretrained"]["pad_id"])
        tok.enable_padding(length=length, pad_id=pad, pad_token=tok.id_to_token(pad) or "[PAD]")
    else:
        tok = feature.tokenizer()
    return tok.to_str()
