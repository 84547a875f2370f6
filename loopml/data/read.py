"""Read a table from CSV/TSV/Parquet/JSONL or take a DataFrame, with one-line errors."""

from __future__ import annotations

import codecs
import csv
import hashlib
import json
import os
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field

from loopml.errors import LoopmlError
from loopml.features.base import StrictModel

#: a file path, a DataFrame, or records (one dict per row, or a single dict for one row)
Source = str | os.PathLike | pd.DataFrame | list[dict] | dict


class DataConfig(StrictModel):
    """How to read data files (ignored for DataFrames)."""

    format: Literal["auto", "csv", "tsv", "parquet", "jsonl"] = "auto"
    #: None = from the extension (.csv ',', .tsv '\t'), else sniffed from the file
    delimiter: str | None = None
    header: bool = True
    #: column names, for files without a header (or to rename)
    names: list[str] | None = None
    encoding: str = "utf-8"
    skip_rows: int = Field(0, ge=0)
    #: lines starting with this character are ignored
    comment: str | None = None
    #: extra strings read as missing, besides pandas' defaults ('', 'NA', 'null', 'NaN', ...)
    na_values: list[str] = ["?"]
    skip_initial_space: bool = True
    #: False reads quote characters as ordinary text (for formats like `label<TAB>raw text`)
    quoting: bool = True
    #: rows with too many fields: error (the default, naming the lines) or skip (and report them)
    bad_rows: Literal["error", "skip"] = "error"
    #: numbers that are infinite or beyond the float32 range (inf, -inf, 1e308) in number columns
    #: and a number target: error (the default, naming column and row) or missing (and report them)
    non_finite: Literal["error", "missing"] = "error"
    #: folder that image/audio paths in the table are relative to, and confined to
    #: (default: the data file's folder; for DataFrames, the working directory)
    media_root: str | None = None


FORMATS = {".csv": "csv", ".txt": "csv", ".tsv": "tsv", ".tab": "tsv", ".parquet": "parquet",
           ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}


def fingerprint(source: Source) -> str:
    """A content hash: the same bytes (or the same DataFrame) give the same fingerprint."""
    digest = hashlib.sha256()
    if isinstance(source, (list, dict)):
        source = _records(source)
    if isinstance(source, pd.DataFrame):
        digest.update(",".join(map(str, source.columns)).encode())
        digest.update(row_hashes(source).tobytes())
    elif check_file(source, allow_dir=True).is_dir():
        for file in sorted(Path(source).rglob("*")):  # a folder-per-class layout: names, sizes, times
            stat = file.stat()
            digest.update(f"{file.relative_to(source)}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    else:
        with open(check_file(source), "rb") as f:  # a missing file is a user error, not an internal one
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def row_hashes(df: pd.DataFrame) -> np.ndarray:
    """A 64-bit hash per row; columns of arrays (in-memory images) are hashed by their bytes."""
    plain = [c for c in df.columns if not _holds_arrays(df[c])]
    hashes = pd.util.hash_pandas_object(df[plain], index=False).to_numpy() if plain else np.zeros(len(df), np.uint64)
    for c in df.columns:
        if c not in plain:
            as_bytes = df[c].map(lambda v: hashlib.blake2b(np.asarray(v).tobytes(), digest_size=8).hexdigest(),
                                 na_action="ignore")
            hashes = hashes * np.uint64(31) + pd.util.hash_pandas_object(as_bytes, index=False).to_numpy()
    return hashes


def _holds_arrays(column: pd.Series) -> bool:
    present = column.dropna()
    return len(present) > 0 and isinstance(present.iloc[0], np.ndarray | list)


def check_file(path: str | os.PathLike, allow_dir: bool = False) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise LoopmlError(f"file not found: {path}")
    if p.is_dir():
        if allow_dir:
            return p.resolve()
        raise LoopmlError(f"expected a file but got a directory: {path}")
    if p.stat().st_size == 0:
        raise LoopmlError(f"file is empty: {path}")
    return p.resolve()


def read_table(source: Source, cfg: DataConfig | None = None) -> pd.DataFrame:
    cfg = cfg or DataConfig()
    if isinstance(source, (list, dict)):
        source = _records(source)
    if isinstance(source, pd.DataFrame):
        df = source.copy()
        df.columns = [str(c) for c in df.columns]
    elif check_file(source, allow_dir=True).is_dir():
        from loopml.data.media import folder_table

        df = folder_table(Path(source).resolve())
    else:
        path = check_file(source)
        fmt = cfg.format if cfg.format != "auto" else FORMATS.get(path.suffix.lower(), "csv")
        try:
            codecs.lookup(cfg.encoding)
        except LookupError:
            raise LoopmlError(f"unknown encoding '{cfg.encoding}' (data.encoding, --encoding)") from None
        try:
            if fmt == "parquet":
                df = pd.read_parquet(path)
            elif fmt == "jsonl":
                df = _read_jsonl(path, cfg.encoding)
            else:
                df = _read_delimited(path, cfg, "\t" if fmt == "tsv" else None)
        except UnicodeDecodeError as e:
            raise LoopmlError(
                f"cannot decode {path.name} as {cfg.encoding} (byte 0x{e.object[e.start]:02x} at offset {e.start}); "
                "set data.encoding (--encoding), e.g. cp1252 or latin-1"
            ) from None
        except (ValueError, OSError, ImportError) as e:  # pyarrow and json errors are ValueErrors
            if isinstance(e, LoopmlError):
                raise
            raise LoopmlError(f"cannot read {path.name} as {fmt}: {str(e).splitlines()[0]}") from None
        if cfg.names and fmt in ("parquet", "jsonl"):
            df.columns = _names(cfg.names, len(df.columns), path.name)
        df.columns = [str(c) for c in df.columns]
        if df.empty:
            raise LoopmlError(f"no data rows in {path.name}")
        df.attrs["base_dir"] = str(path.parent)  # media paths in the table are relative to the file
    if cfg.media_root:
        root = Path(cfg.media_root).expanduser()
        if not root.is_dir():
            raise LoopmlError(f"data.media_root is not a folder: {cfg.media_root}")
        df.attrs["base_dir"] = str(root.resolve())
    if len(set(df.columns)) != len(df.columns):
        dupes = sorted({c for c in df.columns if list(df.columns).count(c) > 1})
        raise LoopmlError(f"duplicate column names: {', '.join(dupes)}")
    return df


def _records(records: list[dict] | dict) -> pd.DataFrame:
    rows = [records] if isinstance(records, dict) else records
    if not rows or not all(isinstance(r, dict) for r in rows):
        raise LoopmlError("records must be a non-empty list of {column: value} mappings")
    return pd.DataFrame.from_records(rows)


def _read_jsonl(path: Path, encoding: str) -> pd.DataFrame:
    """JSON lines (or one JSON array) read with the json module, as the server reads a request:
    floats exactly as written (pandas' reader rounds some) and no dates guessed from column names."""
    with open(path, encoding=encoding) as f:
        text = f.read()
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise LoopmlError(f"{path.name}: not valid JSON ({e.msg} at line {e.lineno})") from None
        lines = list(range(1, len(rows) + 1)) if isinstance(rows, list) else []
    else:
        rows, lines = [], []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise LoopmlError(f"{path.name}: line {number} is not valid JSON ({e.msg})") from None
            lines.append(number)
    for row, number in zip(rows, lines, strict=True):
        if not isinstance(row, dict):
            raise LoopmlError(f"{path.name}: record {number} is not a JSON object of column: value")
    return pd.DataFrame.from_records(rows) if rows else pd.DataFrame()


def _names(names: list[str], width: int, where: str) -> list[str]:
    if len(names) != width:
        raise LoopmlError(f"data.names has {len(names)} names but {where} has {width} columns")
    return names


def _sniff(path: Path, cfg: DataConfig) -> str:
    with open(path, encoding=cfg.encoding, errors="replace", newline="") as f:
        sample = f.read(64 * 1024)
    try:
        return csv.Sniffer().sniff(sample, delimiters=",\t;|").delimiter
    except csv.Error:
        return ","


def _read_delimited(path: Path, cfg: DataConfig, default_delimiter: str | None) -> pd.DataFrame:
    delimiter = cfg.delimiter or default_delimiter
    if delimiter is None:
        delimiter = "," if path.suffix.lower() == ".csv" else _sniff(path, cfg)
    delimiter = delimiter.encode().decode("unicode_escape")  # lets a config say '\t'
    options = dict(
        sep=delimiter,
        header=0 if cfg.header else None,
        encoding=cfg.encoding,
        skiprows=cfg.skip_rows,
        comment=cfg.comment,
        na_values=cfg.na_values,
        skipinitialspace=cfg.skip_initial_space,
        quoting=csv.QUOTE_MINIMAL if cfg.quoting else csv.QUOTE_NONE,
        engine="c",
    )
    if cfg.names:
        options["names"] = cfg.names
    try:
        return _refuse_renamed_duplicates(pd.read_csv(path, on_bad_lines="error", **options), path, cfg, options)
    except pd.errors.EmptyDataError:
        raise LoopmlError(f"file has no columns to read: {path.name}") from None
    except pd.errors.ParserError as e:
        bad = _bad_lines(path, cfg, delimiter)
        if not bad:
            raise LoopmlError(f"{path.name}: malformed CSV: {str(e).splitlines()[-1]}") from None
    if cfg.bad_rows == "error":
        shown = ", ".join(str(n) for n in bad[:10]) + (" ..." if len(bad) > 10 else "")
        raise LoopmlError(
            f"{path.name}: {len(bad)} malformed row(s) with too many fields, at line(s) {shown}; "
            "fix them or set data.bad_rows: skip (--skip-bad-rows)"
        )
    df = _refuse_renamed_duplicates(pd.read_csv(path, on_bad_lines="skip", **options), path, cfg, options)
    df.attrs["skipped_lines"] = bad
    return df


def _refuse_renamed_duplicates(df: pd.DataFrame, path: Path, cfg: DataConfig, options: dict) -> pd.DataFrame:
    """pandas renames a repeated header name ('x', 'x' -> 'x', 'x.1'): refuse it, as for any other source."""
    if cfg.names and not isinstance(df.index, pd.RangeIndex):  # pandas made the unnamed leading fields the index
        raise LoopmlError(f"data.names has {len(cfg.names)} names but {path.name} has "
                          f"{len(cfg.names) + df.index.nlevels} columns")
    columns = [str(c) for c in df.columns]
    if not cfg.header or cfg.names or not any(c.rpartition(".")[0] in columns for c in columns):
        return df
    header = pd.read_csv(path, **{**options, "header": None}, nrows=1, dtype=str, keep_default_na=False).iloc[0]
    names = [str(n) for n in header]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise LoopmlError(f"{path.name}: duplicate column names in the header: {', '.join(dupes)}")
    return df


def _bad_lines(path: Path, cfg: DataConfig, delimiter: str) -> list[int]:
    """Physical line numbers of records with more fields than the header (what pandas rejects)."""
    bad: list[int] = []
    expected = len(cfg.names) if cfg.names else None
    with open(path, encoding=cfg.encoding, newline="") as f:
        reader = csv.reader(
            f, delimiter=delimiter, skipinitialspace=cfg.skip_initial_space,
            quoting=csv.QUOTE_MINIMAL if cfg.quoting else csv.QUOTE_NONE,
        )
        for record in reader:
            if reader.line_num <= cfg.skip_rows or not record:
                continue
            if cfg.comment and record[0].startswith(cfg.comment):
                continue
            if expected is None:
                expected = len(record)
            elif len(record) > expected:
                bad.append(reader.line_num)
    return bad
