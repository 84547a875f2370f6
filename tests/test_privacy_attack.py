"""training.privacy under inputs nobody expects: each is a one-line error (exit 2) or trains correctly."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import stop_after_first_checkpoint

import loopml
from loopml.cli import main

pytest.importorskip("opacus")
pytestmark = pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha")


def table(n: int = 200, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=n), rng.normal(size=n)
    words = np.array(["good", "bad", "fine", "awful", "great", "poor"])
    label = np.where(a - b > 0, "pos", "neg")
    text = [" ".join(rng.choice(words, 4)) for _ in range(n)]
    return pd.DataFrame({"a": a, "b": b, "txt": text, "label": label})


def config(privacy: dict | None = None, **sections) -> dict:
    return {"target": "label", "combiner": {"type": "concat", "layers": [8]},
            "training": {"epochs": 1, "batch_size": 32, "seed": 1, "early_stopping": {"patience": 0},
                         "privacy": {"target_epsilon": 3, **(privacy or {})}}, **sections}


@pytest.mark.parametrize(("privacy", "message"), [
    ({"target_epsilon": 1e308}, "target_epsilon: Input should be less than or equal to 100"),  # hung in the search
    ({"target_epsilon": "inf"}, "target_epsilon: Input should be a finite number"),  # was Infinity in metrics.json
    ({"target_epsilon": 1e-300}, "no noise level spends target_epsilon 1e-300"),  # was an internal error, exit 1
    ({"delta": 1e-300, "accountant": "prv"}, "no noise level spends target_epsilon 3 at delta 1e-300"),
    ({"max_grad_norm": float("inf")}, "max_grad_norm: Input should be a finite number"),  # NaN weights
    ({"max_grad_norm": 1e308}, "max_grad_norm: Input should be less than or equal to"),
    ({"earlier": [[1.0, 0.5, -3]]}, "training.privacy.earlier"),  # a negative cumulative ε
    ({"earlier": [[float("nan"), 0.5, 3]]}, "training.privacy.earlier"),  # hung the accountant
    ({"earlier": [[1.0, 2.0, 3]]}, "training.privacy.earlier"),  # math domain error
])
def test_unexpected_privacy_values_are_one_line_errors_exit_2(tmp_path, capsys, privacy, message):
    table().drop(columns="txt").to_csv(tmp_path / "t.csv", index=False)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config(privacy)))
    code = main(["train", "-d", str(tmp_path / "t.csv"), "-c", str(tmp_path / "c.yaml"), "-o", str(tmp_path / "m"),
                 "-q", "--no-track", "--no-cache"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and err[0].startswith("error:") and message in err[0], err
    assert not (tmp_path / "m").exists() and not (tmp_path / "m.partial").exists()


def test_a_transformer_text_encoder_trains_privately_and_reloads(tmp_path):
    # nn.TransformerEncoder hands its attention a float padding mask; Opacus's DP attention wanted a boolean one
    features = {"txt": {"type": "text", "encoder": {"type": "transformer", "layers": 1, "dim": 16, "heads": 2}}}
    data = table()
    model = loopml.Model(config(features=features)).fit(data, progress=False, cache_dir=False)
    assert 0 < model.metrics["privacy"]["epsilon"] <= 3
    loaded = loopml.load(model.save(tmp_path / "m"))
    assert np.array_equal(loaded.predict_proba(data.head(5)), model.predict_proba(data.head(5)))
    assert any(type(m).__name__ == "PaddingMaskAttention" for m in loaded.network.modules())


def test_a_cnn_image_encoder_with_in_place_relu_trains_privately(tmp_path, monkeypatch):
    from PIL import Image

    monkeypatch.chdir(tmp_path)  # image paths are confined to the data folder (here: the working directory)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(60):
        image = (rng.random((8, 8, 3)) * 100 + (i % 2) * 120).astype("uint8")
        Image.fromarray(image).save(f"{i}.png")
        rows.append({"pic": f"{i}.png", "label": "ab"[i % 2]})
    cfg = config(features={"pic": {"type": "image", "size": [8, 8]}})
    del cfg["combiner"]
    model = loopml.Model(cfg).fit(pd.DataFrame(rows), progress=False, cache_dir=False)
    assert 0 < model.metrics["privacy"]["epsilon"] <= 3
    assert not any(getattr(m, "inplace", False) for m in model.network.modules())
    assert all(torch.isfinite(p).all() for p in model.network.parameters())


def test_the_report_and_models_show_state_delta_and_the_spend(tmp_path, capsys):
    import re

    from loopml.registry import Store

    url = f"sqlite:///{tmp_path / 'r.db'}"
    store = Store(url, str(tmp_path / "artifacts"))
    model = loopml.Model(config({"delta": 1e-5})).fit(table().drop(columns="txt"), progress=False, cache_dir=False,
                                                      track="dp", store=store)
    model.save(tmp_path / "m")
    store.register("dp", run=model.run_id)
    assert main(["report", str(tmp_path / "m"), "-o", str(tmp_path / "r.html")]) in (0, None)
    html = re.sub(r"<[^>]+>", " ", (tmp_path / "r.html").read_text())
    assert re.search(r"δ\s+1e-05", html), "δ shown as 0.0000 in a 4-decimal cell"
    assert "class weights" in html and "not accounted" in html
    capsys.readouterr()
    assert main(["models", "show", "dp", "--store", url]) in (0, None)
    out = capsys.readouterr().out
    cumulative = model.metrics["privacy"]["cumulative_epsilon"]
    assert "ε (δ)" in out and f"{cumulative:.3f} (1e-05)" in out, out


def test_a_resume_under_another_thread_share_ends_with_the_uninterrupted_weights(tmp_path, monkeypatch):
    """Found: killed, then resumed while another training ran, a DP run ended ~1e-8 away from an uninterrupted
    one: the fair thread share had changed, and MKL's products on the Poisson batches' odd sizes (5-11 rows)
    round with the thread count. A DP training now keeps one count, and a resume the checkpoint's."""
    from loopml.train import threads

    for name in ("LOOPML_THREADS", "OMP_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    data = table(400).drop(columns="txt")
    cfg = config(combiner={"type": "concat", "layers": [64, 64]})
    cfg["training"].update(epochs=3, batch_size=8)
    before = torch.get_num_threads()
    monkeypatch.setattr(threads, "fair_share", lambda cpus, trainings: 2)  # alone on the machine
    straight = loopml.Model(cfg).fit(data, progress=False, cache_dir=False)
    assert torch.get_num_threads() == before

    resume_normally = stop_after_first_checkpoint(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        loopml.Model(cfg).fit(data, checkpoint_dir=tmp_path / "ck", progress=False, cache_dir=False)
    resume_normally()
    monkeypatch.setattr(threads, "fair_share", lambda cpus, trainings: 1)  # another training started meanwhile
    resumed = loopml.Model(cfg).fit(data, checkpoint_dir=tmp_path / "ck", resume=True, progress=False,
                                    cache_dir=False)
    assert resumed.info["training"]["resumed"] is True
    assert resumed.metrics["privacy"]["epsilon"] == straight.metrics["privacy"]["epsilon"]
    a, b = resumed.network.state_dict(), straight.network.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.get_num_threads() == before
