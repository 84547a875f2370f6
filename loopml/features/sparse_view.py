"""The ``sparse`` view: TF-IDF n-grams for text, one-hot categories, standardised numbers (a CSR matrix).

Per text column: word 1-2 grams and char_wb 2-5 grams, each sublinear-tf TF-IDF with smooth idf,
rows l2-normalised per analyzer (the two halves side by side, like a FeatureUnion of two
``TfidfVectorizer``). The vocabulary (terms in column order) and idf of each analyzer are fitted on
the training rows by ``fit_sparse`` and kept in the text feature's JSON state
(``state["sparse"]``), so preprocessing.json carries them and predict/serve rebuild the identical
matrix from counts over a fixed vocabulary: nothing is hashed, nothing is pickled.

Numbers use the number feature's fitted scaling (missing -> 0, plus its 0/1 missing indicator when
training had gaps); binary features are 0/1; categories one-hot over ``[unknown] + vocab``; date
features standardise their ``table_columns`` parts (mean/std fitted here, missing -> 0 plus one
indicator). Image and audio columns cannot be a sparse row: a LoopmlError names the column.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from loopml.errors import LoopmlError
from loopml.features.number import _scale_raw, as_numbers
from loopml.features.views import SparseView

#: analyzer name -> (sklearn analyzer, n-gram range, most terms kept)
ANALYZERS = {"word": ("word", (1, 2), 100_000), "char": ("char_wb", (2, 5), 150_000)}
#: terms in fewer training rows than this are dropped (seen once = noise, and a bigger state);
#: tiny training sets that would keep nothing fall back to 1
MIN_DF = 2
#: idf values are stored rounded (the matrix is always built from the stored values, so training
#: and predict agree exactly); 6 decimals keeps the JSON state small
_IDF_DECIMALS = 6
_UNSUPPORTED = {"image", "audio"}


def _kind(feature) -> str:
    return feature.config.type


def _texts(feature, column: pd.Series) -> list[str]:
    return feature._texts(column)  # the text feature's canonical reading: missing -> ""


def fit_sparse(pre, train: pd.DataFrame, min_df: int = MIN_DF, max_features: dict[str, int] | None = None) -> None:
    """Fit the TF-IDF vocabularies (and date scalings) on the training rows, into the features' state."""
    caps = {name: cap for name, (_, _, cap) in ANALYZERS.items()} | (max_features or {})
    for col, feature in pre.features.items():
        kind = _kind(feature)
        if kind in _UNSUPPORTED:
            raise LoopmlError(f"column '{col}' is {kind}: the sparse view (linear learners) cannot read it")
        if kind == "date":
            parts = feature.table_columns(train[col])
            stats = {}
            for name, values in parts.items():
                present = values[~np.isnan(values)]
                mean = float(present.mean()) if present.size else 0.0
                std = float(present.std()) if present.size else 0.0
                stats[name] = [mean, std if std > 0 else 1.0]
            indicator = bool(any(np.isnan(v).any() for v in parts.values()))
            feature.state["sparse"] = {"parts": stats, "indicator": indicator}
            continue
        if kind != "text":
            continue
        texts = _texts(feature, train[col])
        state, train_counts = fit_terms(texts, bool(getattr(feature.config, "lowercase", True)), min_df, caps)
        feature.state["sparse"] = state
        feature.__dict__.pop("_sparse_cache", None)
        # the training rows' counts, for the one view of those rows that follows (spares counting twice)
        feature._sparse_train = (_fingerprint(texts), train_counts)


def fit_terms(texts: list[str], lowercase: bool, min_df: int = MIN_DF,
              max_features: dict[str, int] | None = None) -> tuple[dict, list]:
    """Each analyzer's vocabulary and idf fitted on ``texts`` (a JSON state), and the texts' counts per analyzer
    (None where nothing was kept). Shared by the sparse view and the text feature's ``tfidf`` tokenizer."""
    from sklearn.feature_extraction.text import CountVectorizer

    caps = {name: cap for name, (_, _, cap) in ANALYZERS.items()} | (max_features or {})
    state: dict = {"lowercase": lowercase}
    train_counts = []
    for name, (analyzer, ngrams, _) in ANALYZERS.items():
        terms: list[str] = []
        for floor in dict.fromkeys((min_df, 1)):
            vec = CountVectorizer(analyzer=analyzer, ngram_range=ngrams, lowercase=lowercase,
                                  min_df=min(floor, max(len(texts), 1)), max_features=caps[name])
            try:
                counts = vec.fit_transform(texts).tocsc()
            except ValueError:  # nothing left after pruning (tiny or empty training texts)
                continue
            terms = vec.get_feature_names_out().tolist()
            break
        train_counts.append(counts.tocsr() if terms else None)
        idf: list[float] = []
        if terms:
            df = np.diff(counts.indptr)  # rows holding each term (CSC: nonzeros per column)
            n = len(texts)
            idf = np.round(np.log((1.0 + n) / (1.0 + df)) + 1.0, _IDF_DECIMALS).tolist()
        state[name] = {"analyzer": analyzer, "ngrams": list(ngrams), "terms": terms, "idf": idf}
    return state, train_counts


def _fingerprint(texts: list[str]) -> str:
    import hashlib

    return hashlib.blake2b("\x00".join(texts).encode("utf-8", "surrogatepass"), digest_size=16).hexdigest() + str(len(texts))


def _vectorizers(feature, col: str) -> list[tuple[object, np.ndarray]]:
    """(count vectorizer over the fixed vocabulary, idf) per analyzer of the sparse view's state."""
    state = feature.state.get("sparse")
    if state is None:
        raise LoopmlError(f"the sparse view of text column '{col}' was not fitted (fit_view first)")
    return term_vectorizers(feature, state, "_sparse_cache")


def term_vectorizers(owner, state: dict, slot: str) -> list[tuple[object, np.ndarray]]:
    """(count vectorizer over ``state``'s fixed vocabulary, idf) per analyzer, built once per fitted state and
    kept on ``owner`` under ``slot``."""
    from sklearn.feature_extraction.text import CountVectorizer

    cached = owner.__dict__.get(slot)
    if cached is not None and cached[0] is state:
        return cached[1]
    out = []
    for name in ANALYZERS:
        part = state[name]
        terms = part["terms"]
        vec = None
        if terms:
            vec = CountVectorizer(analyzer=part["analyzer"], ngram_range=tuple(part["ngrams"]),
                                  lowercase=state["lowercase"], vocabulary={t: i for i, t in enumerate(terms)},
                                  dtype=np.float64)
        out.append((vec, np.asarray(part["idf"], dtype=np.float64)))
    owner.__dict__[slot] = (state, out)
    return out


def _tfidf(counts, idf: np.ndarray, rows: int):
    """Sublinear tf x idf, each row l2-normalised, from the term counts (None: no vocabulary)."""
    return _normalised(_raw_tfidf(counts, idf, rows))


def _raw_tfidf(counts, idf: np.ndarray, rows: int):
    """Sublinear tf x idf before normalisation (sorted indices)."""
    import scipy.sparse as sp

    if counts is None:
        return sp.csr_matrix((rows, 0), dtype=np.float64)
    x = sp.csr_matrix(counts, dtype=np.float64, copy=True)
    x.sort_indices()
    x.data = (1.0 + np.log(x.data)) * idf[x.indices]
    return x


def _normalised(raw):
    """A copy of ``raw`` with each row l2-normalised (an empty row, no known term, stays all zeros)."""
    x = raw.copy()
    norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel())
    norms[norms == 0.0] = 1.0
    x.data /= np.repeat(norms, np.diff(x.indptr))
    return x


def term_weights(owner, state: dict, slot: str, texts: list[str]):
    """(TF-IDF rows, the same before each analyzer's l2 normalisation) of ``texts`` over ``state``'s vocabularies,
    the analyzers' blocks side by side: two CSR matrices with one sparsity pattern (sorted indices)."""
    import scipy.sparse as sp

    parts = term_vectorizers(owner, state, slot)
    raw = [_raw_tfidf(None if vec is None else vec.transform(texts), idf, len(texts)) for vec, idf in parts]
    return sp.hstack([_normalised(r) for r in raw], format="csr"), sp.hstack(raw, format="csr")


def _numbers(feature, column: pd.Series) -> np.ndarray:
    s = feature.state
    values = as_numbers(column)
    missing = np.isnan(values)
    with np.errstate(over="ignore", invalid="ignore"):
        scaled = (_scale_raw(np.where(missing, s["fill"], values), s["method"]) - s["center"]) / s["scale"]
    scaled[missing] = 0.0
    parts = [scaled] + ([missing.astype(np.float64)] if s["indicator"] else [])
    return np.stack(parts, axis=1)


def _dates(feature, col: str, column: pd.Series) -> np.ndarray:
    state = feature.state.get("sparse")
    if state is None:
        raise LoopmlError(f"the sparse view of date column '{col}' was not fitted (fit_view first)")
    parts = feature.table_columns(column)
    out, absent = [], np.zeros(len(column), dtype=bool)
    for name, (mean, std) in state["parts"].items():
        values = parts[name]
        absent |= np.isnan(values)
        out.append(np.where(np.isnan(values), 0.0, (values - mean) / std))
    if state["indicator"]:
        out.append(absent.astype(np.float64))
    return np.stack(out, axis=1) if out else np.zeros((len(column), 0))


def _block(feature, col: str, column: pd.Series):
    import scipy.sparse as sp

    kind = _kind(feature)
    if kind == "text":
        texts = _texts(feature, column)
        parts = _vectorizers(feature, col)
        cached = feature.__dict__.get("_sparse_train")
        if cached is not None and cached[0] == _fingerprint(texts):
            counts = feature.__dict__.pop("_sparse_train")[1]  # used once: a server keeps no training matrix
        else:
            counts = [None if vec is None else vec.transform(texts) for vec, _ in parts]
        return sp.hstack([_tfidf(c, idf, len(texts)) for c, (_, idf) in zip(counts, parts, strict=True)], format="csr")
    if kind == "number":
        return sp.csr_matrix(_numbers(feature, column))
    if kind == "binary":
        return sp.csr_matrix(feature.transform(column).numpy().astype(np.float64).reshape(-1, 1))
    if kind == "category":
        ids = feature.transform(column).numpy()
        width = len(feature.state["vocab"]) + 1  # id 0 = unknown/rare
        return sp.csr_matrix((np.ones(len(ids)), (np.arange(len(ids)), ids)), shape=(len(ids), width))
    if kind == "date":
        return sp.csr_matrix(_dates(feature, col, column))
    if kind in _UNSUPPORTED:
        raise LoopmlError(f"column '{col}' is {kind}: the sparse view (linear learners) cannot read it")
    return None  # skip: not an input


def sparse_view(pre, df: pd.DataFrame) -> SparseView:
    """The sparse view of ``df``'s rows: a float32 CSR matrix and the column block of each feature."""
    import scipy.sparse as sp

    pre.check_columns(df)
    mats, blocks, start = [], [], 0
    for col, feature in pre.features.items():
        mat = _block(feature, col, df[col])
        if mat is None:
            continue
        mats.append(mat)
        blocks.append((col, start, start + mat.shape[1]))
        start += mat.shape[1]
    x = sp.hstack(mats, format="csr", dtype=np.float32) if mats else sp.csr_matrix((len(df), 0), dtype=np.float32)
    x.sort_indices()
    return SparseView(x, blocks)


def sparse_columns(pre) -> list[str]:
    """A name per view column ("text:word:free entry", "city=Paris", "age", "age:missing"), for explanations."""
    names: list[str] = []
    for col, feature in pre.features.items():
        kind, s = _kind(feature), feature.state
        if kind == "text" and "sparse" in s:
            names += [f"{col}:{name}:{t}" for name in ANALYZERS for t in s["sparse"][name]["terms"]]
        elif kind == "number":
            names += [col] + ([f"{col}:missing"] if s["indicator"] else [])
        elif kind == "binary":
            names.append(col)
        elif kind == "category":
            names += [f"{col}=<unknown>"] + [f"{col}={v}" for v in s["vocab"]]
        elif kind == "date" and "sparse" in s:
            names += [f"{col}.{p}" for p in s["sparse"]["parts"]] + ([f"{col}:missing"] if s["sparse"]["indicator"] else [])
    return names
