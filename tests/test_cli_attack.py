"""Issue 11, CLI and data attacks: what a new user or an attacker types, checked end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from conftest import ROOT

CLI = [sys.executable, "-m", "loopml"]


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(CLI + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def _user_error(result: subprocess.CompletedProcess) -> str:
    """Exit 2 with one line on stderr, no traceback; returns that line."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert len(lines) == 1 and "Traceback" not in result.stderr and "internal error" not in result.stderr, lines
    return lines[0]


def test_unstratified_split_with_a_one_class_validation_trains_and_marks_importance_unavailable(tmp_path):
    # 3 rows of "b" in 40 and no stratification: the 4-row validation split holds only "a", so the
    # default importance metric (roc_auc) cannot be computed there; that must not end the training
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x": rng.random(40).round(3), "y": rng.integers(0, 6, 40),
                          "label": ["b"] * 3 + ["a"] * 37})
    frame.to_csv(tmp_path / "rare.csv", index=False)
    (tmp_path / "c.yaml").write_text("target: {column: label}\nsplit: {stratify: false, seed: 1}\ntraining: {epochs: 1}\n")
    result = _cli(["train", "-d", "rare.csv", "-c", "c.yaml", "-o", "out", "--no-track"], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert not (tmp_path / "out.partial").exists()
    importance = json.loads((tmp_path / "out" / "evaluation.json").read_text())["importance"]
    assert importance["features"] == [] and "roc_auc" in importance["unavailable"]
    assert "Not computed on the validation rows" in (tmp_path / "out" / "report.html").read_text()
