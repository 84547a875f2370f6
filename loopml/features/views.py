"""Views of the features for learners other than networks, from the one fitted preprocessing state.

``tensors`` is ``Preprocessor.transform`` (the network's input). The two views here:

- ``table``: one float64 column per number/binary feature (raw values, NaN for missing: no
  normalisation or binning), one integer-code column per category feature (codes from the
  category's fitted vocabulary, NaN for missing/unknown; listed in ``categorical`` with their
  cardinality) and, for a date feature, its numeric parts. Text/image/audio columns are refused
  by learners that read this view (a config error naming the column).
- ``sparse``: a CSR matrix: TF-IDF of word 1-2 and char 2-5 n-grams per text column (vocabulary
  and idf fitted on the training split and kept in the feature's JSON state), one-hot categories,
  standardised numbers.

A view that needs fitting (TF-IDF) is fitted with ``fit_view(pre, kind, train_frame)`` before
training; its state lives in the features' ``state`` dicts, so preprocessing.json holds it and
predict/serve compute the identical view.

- ``text``: the text columns' canonical strings (missing -> ""), per column (``TextView``), for
  learners that embed texts themselves (``embedding_linear``). Other columns are not in it; nothing
  to fit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class TableView:
    x: np.ndarray  # (n, columns) float64
    columns: list[str]  # view column names: the feature name, or "feature.part" for dates
    #: indices into ``columns`` of the integer-code (categorical) columns -> their cardinality
    categorical: dict[int, int]
    #: the input feature each view column comes from (for importance/attribution per feature)
    sources: list[str]

    def __len__(self) -> int:
        return len(self.x)

    def rows(self, index: np.ndarray) -> TableView:
        return TableView(self.x[index], self.columns, self.categorical, self.sources)


@dataclass
class SparseView:
    x: object  # scipy.sparse.csr_matrix (n, d) float32
    #: (feature, first column, end column) per input feature, in column order
    blocks: list[tuple[str, int, int]]

    def __len__(self) -> int:
        return self.x.shape[0]

    def rows(self, index: np.ndarray) -> SparseView:
        return SparseView(self.x[index], self.blocks)


@dataclass
class TextView:
    #: text column -> its rows' canonical strings (the text feature's reading: missing -> "")
    x: dict[str, list[str]]

    def __len__(self) -> int:
        return len(next(iter(self.x.values()))) if self.x else 0

    def rows(self, index: np.ndarray) -> TextView:
        return TextView({col: [texts[int(i)] for i in index] for col, texts in self.x.items()})


def text_view(pre, df) -> TextView:
    from loopml.errors import LoopmlError

    pre.check_columns(df)
    x = {col: f._texts(df[col]) for col, f in pre.features.items() if f.config.type == "text"}
    if not x:
        raise LoopmlError("the text view needs at least one text column")
    return TextView(x)


def fit_view(pre, kind: str, train) -> None:
    """Fit what a view needs beyond the features' own state (TF-IDF vocabularies), on the training rows."""
    if kind == "sparse":
        from loopml.features.sparse_view import fit_sparse

        fit_sparse(pre, train)


def make_view(pre, kind: str, df):
    """The ``kind`` view of the rows of ``df``: tensors, a TableView, a SparseView or a TextView."""
    if kind == "tensors":
        return pre.transform(df)
    if kind == "table":
        from loopml.features.table_view import table_view

        return table_view(pre, df)
    if kind == "sparse":
        from loopml.features.sparse_view import sparse_view

        return sparse_view(pre, df)
    if kind == "text":
        return text_view(pre, df)
    raise ValueError(f"unknown view {kind!r}")
