"""Explanations: permutation importance and integrated gradients (tabular, text)."""

import numpy as np
import pandas as pd
import torch

import loopml
from loopml.cli import main
from loopml.evaluate.explain import integrated_gradients


def test_permutation_importance_ranks_the_signal_first(tabular):
    model = loopml.Model(target="label", training={"epochs": 10}).fit(tabular.drop(columns=["note"]), progress=False)
    ranked = [f["feature"] for f in model.evaluation["importance"]["features"]]
    assert ranked[0] == "x1" and ranked.index("flag") > ranked.index("x2")  # flag is pure noise
    imp = model.feature_importance(tabular, repeats=3)
    assert imp["metric"] == "roc_auc" and imp["repeats"] == 3 and len(imp["features"][0]["drops"]) == 3
    assert imp["features"][0]["feature"] == "x1"


def test_integrated_gradients_are_complete_for_tabular_rows(tabular):
    """Completeness: attributions sum to f(row) - f(reference), here within 2% of the gap."""
    data = tabular.drop(columns=["note"])
    model = loopml.Model(target="label", training={"epochs": 10}).fit(data, progress=False)
    inputs = model.preprocessor.transform(data.iloc[:8])
    attributions = integrated_gradients(model.network, inputs, None, n_steps=128)
    total = sum(a for a in attributions.values())
    with torch.no_grad():
        gap = model.network(inputs) - model.network({k: torch.zeros_like(v) for k, v in inputs.items()})
    assert torch.allclose(total, gap, atol=0.02 * float(gap.abs().max()) + 1e-3)


def test_text_attributions_highlight_the_words_that_decide():
    rng = np.random.default_rng(0)
    filler = ["the", "a", "item", "today", "we", "you", "call", "now", "box", "red"]
    texts, labels = [], []
    for i in range(600):
        words = list(rng.choice(filler, size=6))
        spam = i % 2 == 0
        words.insert(int(rng.integers(0, 6)), "prize" if spam else "meeting")
        texts.append(" ".join(words))
        labels.append("spam" if spam else "ham")
    df = pd.DataFrame({"text": texts, "label": labels})
    model = loopml.Model(target="label", training={"epochs": 8}).fit(df, progress=False)
    rows = model.explain(df, [0, 2, 4])
    for row in rows:
        assert row["prediction"] == "spam"
        tokens = row["tokens"]["text"]
        assert max(tokens, key=lambda t: t[1])[0] == "prize"


def test_explain_cli_writes_html_and_json(tabular, tmp_path, capsys):
    csv = tmp_path / "data.csv"
    tabular.to_csv(csv, index=False)
    assert main(["train", "-d", str(csv), "-t", "label", "-o", str(tmp_path / "m"), "-q", "--epochs", "5"]) == 0
    assert main(["explain", str(tmp_path / "m"), "-d", str(csv), "--rows", "0,3", "--repeats", "2"]) == 0
    out = capsys.readouterr().out
    assert "top features by roc_auc drop" in out
    page = (tmp_path / "m" / "explain.html").read_text()
    assert 'id="importance"' in page and 'id="explanations"' in page and 'class="tok"' in page
    assert (tmp_path / "m" / "explain.json").is_file()
    assert main(["explain", str(tmp_path / "m"), "-d", str(csv), "--rows", "0,999"]) == 2
    assert main(["explain", str(tmp_path / "m"), "-d", str(csv), "--rows", "x"]) == 2
    assert "out of range" in capsys.readouterr().err
