"""Predictions of an exported loopml network, without loopml: ``python predict_onnx.py rows.csv``.

Reads preprocessing.json beside this file (per column: its type and fitted state; the target's
decoding), turns every CSV row into the network's input tensors, runs model.onnx with ONNX Runtime
(model.pt with TorchScript, when exported with --format torchscript) and prints one prediction per
row: the class, or the number. Needs numpy and onnxruntime, tokenizers for text columns (not for
``tokenizer: tfidf`` ones: their word and char n-grams are counted here, as scikit-learn's vectorizers
count them) and Pillow for image columns (paths relative to the CSV's folder, decoded and resized as loopml does).

Values a column cannot read (text in a number column, a third value in a binary one, a date that is
not ISO 8601) are read as missing and counted on stderr, as ``loopml predict --coerce`` does.
"""

from __future__ import annotations

import csv
import datetime
import json
import re
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
_DECIMAL = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)
_INTEGER = re.compile(r"[+-]?\d+", re.ASCII)
_ISO = re.compile(r"(\d{4})-(\d{2})-(\d{2})(?:[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d{1,9}))?)?"
                  r"(?: ?(Z|z|[+-]\d{2}(?::?\d{2})?))?)?", re.ASCII)
_DAY = 86_400_000_000  # microseconds
_FLOAT32_MAX = 3.4028234663852886e38
coerced: dict[str, int] = {}
media_root = Path.cwd()  # image paths are relative to the CSV's folder (set by main)


def key(text: str | None) -> str | None:
    """The one string form of a value (loopml's canonical key): '2.0' -> '2', 'True' -> '1', stripped."""
    text = (text or "").strip()
    if not text:
        return None
    if len(text) <= 64 and text[0] in "0123456789+-." and _DECIMAL.fullmatch(text):
        if _INTEGER.fullmatch(text):
            return str(int(text))
        number = float(text)
        return ("inf" if number > 0 else "-inf") if abs(number) == float("inf") else (
            str(int(number)) if number.is_integer() else repr(number))
    return {"true": "1", "false": "0"}.get(text.lower(), text) if len(text) <= 5 else text


def _unblank(lines):
    """The file's lines without the blank ones pandas skips: empty or whitespace only, outside a quoted field."""
    quoted = False
    for line in lines:
        if not quoted and not line.strip():
            continue
        quoted ^= line.count('"') % 2 == 1  # a doubled quote inside a field counts twice: the parity holds
        yield line


def read_csv(path: str, spec: dict) -> dict[str, list[str | None]]:
    """Each column's cells as text, None where missing (the same strings pandas reads as missing)."""
    options = spec["csv"]
    missing = set(options["missing"])
    try:
        with open(path, encoding=options["encoding"], newline="") as f:
            reader = csv.reader(_unblank(f), delimiter=options["delimiter"],
                                skipinitialspace=options["skip_initial_space"])
            header = [h.strip() for h in next(reader, [])]
            rows = [row for row in reader if row]
    except OSError as e:
        sys.exit(f"error: cannot read {path}: {e.strerror}")
    except (UnicodeDecodeError, csv.Error) as e:
        sys.exit(f"error: cannot read {path} as {options['encoding']} CSV ({str(e)[:120]})")
    if not header:
        sys.exit(f"error: {path} is empty (no header row)")
    if not rows:
        sys.exit(f"error: {path} has a header but no rows to predict")
    wanted = [c["name"] for c in spec["columns"]]
    absent = [c for c in wanted if c not in header]
    if absent:
        sys.exit(f"error: {path} has no column(s) {', '.join(absent)}")
    at = {name: header.index(name) for name in wanted}
    return {name: [None if i >= len(row) or row[i] in missing else row[i] for row in rows]
            for name, i in at.items()}


def _bad(column: str, count: int) -> None:
    if count:
        coerced[column] = coerced.get(column, 0) + count


def number_input(c: dict, cells: list) -> np.ndarray:
    values = np.full(len(cells), np.nan)
    for i, cell in enumerate(cells):
        if cell is not None and _DECIMAL.fullmatch(cell.strip()) and abs(float(cell)) <= _FLOAT32_MAX:
            values[i] = float(cell)
    _bad(c["name"], sum(cell is not None for cell in cells) - int((~np.isnan(values)).sum()))
    missing = np.isnan(values)
    raw = np.where(missing, c["fill"], values)
    with np.errstate(over="ignore", invalid="ignore"):
        scaled = np.sign(raw) * np.log1p(np.abs(raw)) if c["method"] == "log1p" else raw
        parts = [(scaled - c["center"]) / c["scale"]]
        edges = np.asarray(c["edges"])
        if edges.size:
            lo, hi = edges[:-1][None, :], edges[1:][None, :]
            parts += list(np.clip((raw[:, None] - lo) / (hi - lo), 0.0, 1.0).T)
    if c["indicator"]:
        parts.append(missing.astype(np.float64))
    return np.stack(parts, axis=1).astype(np.float32)


def category_input(c: dict, cells: list) -> np.ndarray:
    keys = [key(cell) for cell in cells]
    return np.array([c["missing_id"] if k is None else c["index"].get(k, c["unknown_id"]) for k in keys], dtype=np.int64)


def binary_input(c: dict, cells: list) -> np.ndarray:
    keys = [key(cell) for cell in cells]
    _bad(c["name"], sum(k is not None and k not in c["values"] for k in keys))
    out = [c["fill"] if k is None or k not in c["values"] else float(k == c["positive"]) for k in keys]
    return np.array(out, dtype=np.float32)[:, None]


# -- tokenizer: tfidf: scikit-learn's CountVectorizer analyzers over a fixed vocabulary, then sublinear TF-IDF --
_WORD_TOKEN = re.compile(r"(?u)\b\w\w+\b")  # CountVectorizer's default token_pattern
_WHITE_SPACES = re.compile(r"\s\s+")


def word_ngrams(text: str, ngrams: list[int]) -> list[str]:
    """The ``word`` analyzer's terms: tokens of 2+ word characters, their n-grams joined by one space."""
    tokens = _WORD_TOKEN.findall(text)
    low, high = ngrams
    return [" ".join(tokens[i : i + n]) for n in range(low, high + 1) for i in range(len(tokens) - n + 1)]


def char_wb_ngrams(text: str, ngrams: list[int]) -> list[str]:
    """The ``char_wb`` analyzer's terms: char n-grams inside each space-padded word (a word shorter than n once)."""
    low, high = ngrams
    out = []
    for w in _WHITE_SPACES.sub(" ", text).split():
        w = " " + w + " "
        for n in range(low, high + 1):
            offset = 0
            out.append(w[offset : offset + n])
            while offset + n < len(w):
                offset += 1
                out.append(w[offset : offset + n])
            if offset == 0:  # scikit-learn counts a short word (len(w) < n) once and stops there
                break
    return out


_ANALYZE = {"word": word_ngrams, "char_wb": char_wb_ngrams}


def tfidf_input(c: dict, cells: list) -> np.ndarray:
    """[N, 2, max_length] float32: term ids (1-based, 0 pads) over their weights, (1 + log count) * idf
    l2-normalised per analyzer; a text with more terms keeps the largest weights before normalisation
    (ties: the lower id), all in id order."""
    state, length = c["tfidf"], c["max_length"]
    parts, start = [], 0
    for name in ("word", "char"):
        part = state[name]
        index = {term: start + i for i, term in enumerate(part["terms"])}
        parts.append((_ANALYZE[part["analyzer"]], part["ngrams"], index, start, np.asarray(part["idf"], dtype=np.float64)))
        start += len(part["terms"])
    out = np.zeros((len(cells), 2, length), dtype=np.float32)
    for row, cell in enumerate(cells):
        text = key(cell) or ""
        if state["lowercase"]:
            text = text.lower()
        ids, raw, weights = [], [], []
        for analyze, ngrams, index, first, idf in parts:
            counts: dict[int, int] = {}
            for term in analyze(text, ngrams):
                at = index.get(term)
                if at is not None:
                    counts[at] = counts.get(at, 0) + 1
            if not counts:
                continue
            at = np.array(sorted(counts), dtype=np.int64)
            values = (1.0 + np.log(np.array([counts[i] for i in at], dtype=np.float64))) * idf[at - first]
            norm = np.sqrt(np.add.reduceat(values * values, [0])[0])  # summed as scipy sums a CSR row
            ids.append(at)
            raw.append(values)
            weights.append(values / (norm if norm != 0.0 else 1.0))
        if not ids:
            continue
        at, values, scaled = np.concatenate(ids), np.concatenate(raw), np.concatenate(weights)
        if len(at) > length:
            kept = np.sort(np.lexsort((at, -values))[:length])
            at, scaled = at[kept], scaled[kept]
        out[row, 0, : len(at)] = at + 1
        out[row, 1, : len(at)] = scaled
    return out


def text_input(c: dict, cells: list) -> np.ndarray:
    if "tfidf" in c:
        return tfidf_input(c, cells)
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(HERE / c["tokenizer"]))
    encoded = tokenizer.encode_batch([key(cell) or "" for cell in cells])
    return np.array([e.ids for e in encoded], dtype=np.int64).reshape(len(cells), -1)


def instant(text: str) -> int | None:
    """Microseconds since 1970-01-01 (UTC for zoned values) of an ISO 8601 date or timestamp."""
    match = _ISO.fullmatch(text.strip())
    if match is None:
        return None
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    try:
        days = (datetime.date(int(year), int(month), int(day)) - datetime.date(1970, 1, 1)).days
    except ValueError:
        return None
    h, m, s = int(hour or 0), int(minute or 0), int(second or 0)
    if h > 23 or m > 59 or s > 59:
        return None
    offset = 0
    if zone and zone not in "Zz":
        digits = zone[1:].replace(":", "")
        zh, zm = int(digits[:2]), int(digits[2:] or 0)
        if zh > 23 or zm > 59:
            return None
        offset = (1 if zone[0] == "+" else -1) * (zh * 3600 + zm * 60) * 1_000_000
    return days * _DAY + (h * 3600 + m * 60 + s) * 1_000_000 + int((fraction or "0")[:6].ljust(6, "0")) - offset


def date_input(c: dict, cells: list) -> np.ndarray:
    parsed = [None if cell is None else instant(cell) for cell in cells]
    _bad(c["name"], sum(cell is not None and p is None for cell, p in zip(cells, parsed, strict=True)))
    absent = np.array([p is None for p in parsed])
    micros = np.array([p or 0 for p in parsed], dtype=np.int64)
    days = np.floor_divide(micros, _DAY)
    day64 = days.astype("datetime64[D]")
    month64 = day64.astype("datetime64[M]")
    start = month64.astype("datetime64[D]")
    ordinal = days + (micros - days * _DAY) / _DAY
    year = (day64.astype("datetime64[Y]").astype(np.int64) + 1970).astype(np.float64)
    month = (np.mod(month64.astype(np.int64), 12) + 1).astype(np.float64)
    mday = ((day64 - start).astype(np.int64) + 1).astype(np.float64)
    month_days = ((month64 + 1).astype("datetime64[D]") - start).astype(np.int64).astype(np.float64)
    inputs = [(ordinal - c["ordinal_mean"]) / c["ordinal_std"], (year - c["year_mean"]) / c["year_std"]]
    cycles = [(month - 1, 12.0), (np.mod(days + 3, 7).astype(np.float64), 7.0), (mday - 1, month_days)]
    if c["has_time"]:
        cycles.append(((micros - days * _DAY) / 3_600_000_000, 24.0))
    for value, period in cycles:
        angle = 2 * np.pi * value / period
        inputs += [np.sin(angle), np.cos(angle)]
    x = np.where(absent[:, None], 0.0, np.stack(inputs, axis=1))
    return np.concatenate([x, absent[:, None]], axis=1).astype(np.float32)


def image_input(c: dict, cells: list) -> np.ndarray:
    """Each path's pixels as uint8 [N, C, H, W]: Pillow decode, grey/RGB, resized to the training size."""
    from PIL import Image

    resample = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
                "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}[c["resize"]]
    height, width = c["size"]
    arrays = []
    for cell in cells:
        if not cell or not cell.strip():
            sys.exit(f"error: column '{c['name']}': no image path")
        path = Path(cell.strip())
        try:
            with Image.open(path if path.is_absolute() else media_root / path) as image:
                image = image.convert({1: "L", 3: "RGB"}[c["channels"]])
                if image.size != (width, height):
                    image = image.resize((width, height), resample)
                array = np.asarray(image)
        except (OSError, ValueError, SyntaxError) as e:
            sys.exit(f"error: column '{c['name']}': cannot read image {cell.strip()} ({type(e).__name__})")
        arrays.append(array if array.ndim == 3 else array[:, :, None])
    return np.ascontiguousarray(np.stack(arrays).transpose(0, 3, 1, 2))


INPUTS = {"number": number_input, "category": category_input, "binary": binary_input, "text": text_input,
          "date": date_input, "image": image_input}


def inputs(spec: dict, table: dict[str, list]) -> dict[str, np.ndarray]:
    """The network's input tensors by input name."""
    for c in spec["columns"]:
        if c.get("standalone") is False or c["type"] not in INPUTS:
            sys.exit(f"error: column '{c['name']}' ({c['type']}) is not covered by this example; "
                     "model.onnx takes its tensor as loopml computes it")
    return {c["input"]: INPUTS[c["type"]](c, table[c["name"]]) for c in spec["columns"]}


def scores(spec: dict, feed: dict[str, np.ndarray]) -> np.ndarray:
    network = HERE / spec["network"]["file"]
    if spec["network"]["format"] == "torchscript":
        import warnings

        import torch

        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated; its .pt modules still load
            module = torch.jit.load(str(network))
            return module(*(torch.from_numpy(feed[c["input"]]) for c in spec["columns"])).numpy()
    import onnxruntime as ort

    session = ort.InferenceSession(str(network), providers=["CPUExecutionProvider"])
    return session.run([spec["output"]], feed)[0]


def decode(target: dict, out: np.ndarray) -> list:
    """Scores -> the class (argmax, or p(positive) >= the tuned threshold) or the number."""
    if target["kind"] == "number":
        return [float(v) for v in out.reshape(-1) * target["std"] + target["mean"]]
    if target["kind"] == "binary":
        p1 = 1.0 / (1.0 + np.exp(-out.reshape(-1).astype(np.float64)))
        proba = np.stack([1.0 - p1, p1], axis=1)
    else:
        z = out.astype(np.float64) - out.max(axis=1, keepdims=True)
        proba = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    threshold = target.get("threshold")
    picked = (proba[:, 1] >= threshold).astype(np.int64) if threshold is not None and proba.shape[1] == 2 \
        else proba.argmax(axis=1)
    return [target["classes"][i] for i in picked]


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        sys.exit("usage: python predict_onnx.py rows.csv")
    global media_root
    media_root = Path(argv[0]).resolve().parent
    spec = json.loads((HERE / "preprocessing.json").read_text(encoding="utf-8"))
    table = read_csv(argv[0], spec)
    for prediction in decode(spec["target"], scores(spec, inputs(spec, table))):
        print(repr(prediction) if isinstance(prediction, float) else prediction)
    if coerced:
        print("read as missing: " + ", ".join(f"{c} ({n})" for c, n in coerced.items()), file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
