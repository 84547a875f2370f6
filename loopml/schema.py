"""From a table and a config to a schema: the target's kind and every column's type, with evidence."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import pandas as pd
import yaml

from loopml.config import Config
from loopml.data.infer import column_stats, infer_feature_type, infer_target_kind, reason
from loopml.errors import LoopmlError, did_you_mean


@dataclass
class ColumnInfo:
    name: str
    type: str
    reason: str
    stats: dict = field(default_factory=dict)


@dataclass
class Schema:
    target: str
    target_kind: str
    columns: list[ColumnInfo]
    target_stats: dict = field(default_factory=dict)

    @property
    def inputs(self) -> list[ColumnInfo]:
        """The columns the model reads (everything not skipped)."""
        return [c for c in self.columns if c.type != "skip"]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> Schema:
        return cls(raw["target"], raw["target_kind"], [ColumnInfo(**c) for c in raw["columns"]], raw["target_stats"])

    def check_trainable(self) -> None:
        for c in self.inputs:
            if c.stats.get("rows") and c.stats["missing"] == c.stats["rows"]:
                raise LoopmlError(
                    f"column '{c.name}' is entirely missing ({c.stats['rows']} rows); "
                    "add it to 'exclude' or give it values"
                )
        if not self.inputs:
            raise LoopmlError("no input columns left to learn from (all excluded or skipped)")

    def to_yaml(self) -> str:
        """An editable config: types as settings, the evidence as comments. Pass it back with --config."""
        lines = [
            "# written by `loopml describe`: edit the types, then pass this file back with --config",
            yaml.safe_dump({"target": {"column": self.target, "type": self.target_kind}}, sort_keys=False).rstrip(),
            "features:",
        ]
        for c in self.columns:
            s = c.stats
            evidence = (
                f"{c.reason}; {s['unique']} unique, {s['missing_pct']}% missing, "
                f"e.g. {', '.join(repr(v) for v in s['samples'])}"
            )
            lines.append(f"  {yaml.safe_dump(c.name).splitlines()[0]}: {{type: {c.type}}}  # {evidence}")
        return "\n".join(lines) + "\n"


def build_schema(df: pd.DataFrame, config: Config, ignore: tuple[str, ...] = ()) -> Schema:
    """Infer column types, apply the config's overrides, check names. Raises LoopmlError."""
    columns = list(df.columns)
    target = config.target.column
    if target not in columns:
        raise LoopmlError(f"target column '{target}' not found{did_you_mean(target, columns)}; columns: "
                          + ", ".join(columns[:20]) + (" ..." if len(columns) > 20 else ""))
    for name in list(config.features) + list(config.exclude):
        if name not in columns:
            raise LoopmlError(f"column '{name}' named in the config is not in the data{did_you_mean(name, columns)}")
    if target in config.features or target in config.exclude:
        raise LoopmlError(f"the target '{target}' cannot also be an input feature or excluded")
    target_stats = column_stats(df[target])
    kind = config.target.type if config.target.type != "auto" else infer_target_kind(df[target], target_stats)
    infos = []
    for name in columns:
        if name == target or name in ignore:
            continue
        stats = column_stats(df[name])
        if name in config.exclude:
            infos.append(ColumnInfo(name, "skip", "excluded in the config", stats))
        elif name in config.features:
            infos.append(ColumnInfo(name, config.features[name].type, "set in the config", stats))
        else:
            type_name = infer_feature_type(df[name], stats)
            infos.append(ColumnInfo(name, type_name, reason(type_name, stats), stats))
    return Schema(target, kind, infos, target_stats)
