"""training.privacy: DP-SGD through Opacus, its accounting, and where the spent ε is recorded."""

from __future__ import annotations

import copy
import math

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import stop_after_first_checkpoint
from torch import nn

import loopml
from loopml.cli import main
from loopml.errors import LoopmlError
from loopml.train.privacy import dp_safe_network, spent

pytest.importorskip("opacus")
pytestmark = pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha")

from opacus.accountants import RDPAccountant  # noqa: E402
from opacus.accountants.utils import get_noise_multiplier  # noqa: E402


def table(n: int = 600, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=n), rng.normal(size=n)
    kind = rng.choice(["alpha", "beta", "gamma"], size=n)
    score = 1.5 * a - b + np.where(kind == "alpha", 1.5, 0.0)
    label = np.where(score + rng.normal(scale=0.3, size=n) > 0.4, "pos", "neg")
    return pd.DataFrame({"a": a, "b": b, "kind": kind, "label": label})


def config(epsilon: float = 4.0, epochs: int = 3, **training) -> dict:
    return {"target": "label", "combiner": {"type": "concat", "layers": [16]},
            "training": {"epochs": epochs, "batch_size": 64, "seed": 1, "optimizer": {"lr": 0.01},
                         "early_stopping": {"patience": 0}, "privacy": {"target_epsilon": epsilon}, **training}}


@pytest.fixture(scope="module")
def dp_model() -> loopml.Model:
    return loopml.Model(config()).fit(table(), progress=False, cache_dir=False)


def test_recorded_epsilon_is_the_accountants_for_the_steps_that_ran(dp_model):
    record = dp_model.info["training"]["privacy"]
    rows = record["rows"]
    steps_per_epoch = math.ceil(rows / 64)
    assert record["sample_rate"] == pytest.approx(1 / steps_per_epoch)
    assert record["steps"] == 3 * steps_per_epoch and dp_model.info["training"]["epochs_run"] == 3
    sigma = get_noise_multiplier(target_epsilon=4.0, target_delta=1e-5, sample_rate=1 / steps_per_epoch, epochs=3,
                                 epsilon_tolerance=0.01)
    assert record["noise_multiplier"] == pytest.approx(sigma) and sigma > 0.3
    fresh = RDPAccountant()
    fresh.history = [(sigma, 1 / steps_per_epoch, 3 * steps_per_epoch)]
    assert record["epsilon"] == pytest.approx(fresh.get_epsilon(1e-5), rel=1e-12)
    assert 3.9 < record["epsilon"] <= 4.0 and record["accountant"] == "rdp"
    per_epoch = [e["epsilon"] for e in dp_model.history]
    assert per_epoch == sorted(per_epoch) and per_epoch[-1] == pytest.approx(record["epsilon"])
    metrics = dp_model.metrics["privacy"]
    assert metrics["epsilon"] == record["epsilon"] and metrics["delta"] == 1e-5
    assert metrics["cumulative_epsilon"] == record["epsilon"]


def test_batches_are_poisson_samples_at_the_accounted_rate(dp_model):
    from loopml.train.trainer import Trainer

    trainer = Trainer(copy.deepcopy(dp_model.network), loopml.config.load_config(config()).training)  # steps change it
    trainer.privacy.begin(1000)
    sizes = [len(b) for b in trainer.privacy.batches(1000, seed=0, epoch=0)]
    assert len(sizes) == math.ceil(1000 / 64) and len(set(sizes)) > 3  # sizes vary: not fixed-size batches
    assert abs(np.mean(sizes) - 1000 * trainer.privacy.sample_rate) < 15
    trainer.privacy.empty_step()  # a step that drew no row still adds noise and is counted
    assert trainer.privacy.accountant.history[-1][2] == 1


def test_early_stop_spends_less_and_a_report_and_metrics_show_it(tmp_path):
    model = loopml.Model(config(epochs=6, max_time=1e-3)).fit(table(), progress=False, cache_dir=False)
    record = model.info["training"]["privacy"]
    assert model.info["training"]["epochs_run"] == 1 and record["epsilon"] < 4.0 * 0.8
    model.save(tmp_path / "m", report=True)
    html = (tmp_path / "m" / "report.html").read_text(encoding="utf-8")
    assert "Differential privacy" in html and f"{record['epsilon']:.4f}"[:5] in html


def test_batch_norm_is_replaced_and_the_model_learns_and_reloads(tmp_path):
    data = table(1500, seed=2)
    cfg = config(epsilon=50.0, epochs=6)
    cfg["combiner"]["norm"] = "batch"
    model = loopml.Model(cfg).fit(data, progress=False, cache_dir=False)
    kinds = {type(m).__name__ for m in model.network.modules()}
    assert "LayerNorm" in kinds and not any("BatchNorm" in k for k in kinds)
    majority = (data["label"] == data["label"].mode()[0]).mean()
    assert model.metrics["test"]["accuracy"] > majority + 0.1
    again = loopml.load(model.save(tmp_path / "m"))
    assert np.allclose(again.predict_proba(data).to_numpy(), model.predict_proba(data).to_numpy(), atol=1e-6)
    conv = dp_safe_network(nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU()))
    assert isinstance(conv[1], nn.GroupNorm)


def test_resume_continues_the_count_and_ends_where_an_uninterrupted_run_does(tmp_path, monkeypatch, dp_model):
    resume_normally = stop_after_first_checkpoint(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        loopml.Model(config()).fit(table(), checkpoint_dir=tmp_path / "ck", progress=False, cache_dir=False)
    resume_normally()
    resumed = loopml.Model(config()).fit(table(), checkpoint_dir=tmp_path / "ck", resume=True, progress=False,
                                         cache_dir=False)
    assert resumed.info["training"]["resumed"] is True
    assert resumed.info["training"]["privacy"]["steps"] == dp_model.info["training"]["privacy"]["steps"]
    assert resumed.metrics["privacy"]["epsilon"] == pytest.approx(dp_model.metrics["privacy"]["epsilon"])
    a, b = resumed.network.state_dict(), dp_model.network.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(LoopmlError, match="cannot resume this DP training"):  # other settings: other noise
        loopml.Model(config(epsilon=2.0)).fit(table(), checkpoint_dir=tmp_path / "ck", resume=True, progress=False,
                                              cache_dir=False)


@pytest.mark.parametrize(("change", "message"), [
    ({"learner": "lightgbm"}, "set learner: network"),
    ({"training": {"precision": "bf16"}}, "needs training.precision: fp32"),
    ({"training": {"compile": True}}, "set compile: false"),
    ({"target": {"column": "label", "sampling": "oversample"}}, "use target.class_weights instead"),
    ({"training": {"privacy": {"target_epsilon": 1, "delta": 0.01}}}, "set a smaller delta"),
    ({"training": {"privacy": {"target_epsilon": 0}}}, "training.privacy.target_epsilon"),
])
def test_bad_settings_are_one_line_errors_exit_2(tmp_path, capsys, change, message):
    from loopml.config import _deep_merge

    table(300).to_csv(tmp_path / "t.csv", index=False)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(_deep_merge(config(epochs=1), change)))
    code = main(["train", "-d", str(tmp_path / "t.csv"), "-c", str(tmp_path / "c.yaml"), "-o", str(tmp_path / "m"),
                 "-q", "--no-track"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and err[0].startswith("error:") and message in err[0], err
    assert not (tmp_path / "m").exists()


def test_the_run_and_the_registered_version_record_the_spend(tmp_path):
    from loopml.registry import Store

    store = Store(f"sqlite:///{tmp_path / 'r.db'}", str(tmp_path / "artifacts"))
    model = loopml.Model(config(epochs=2)).fit(table(), progress=False, cache_dir=False, track="dp", store=store)
    model.save(tmp_path / "m")
    run = store.get_run(model.run_id)
    assert run["params"]["training"]["privacy"]["target_epsilon"] == 4.0
    assert run["metrics"]["privacy"]["epsilon"] == model.metrics["privacy"]["epsilon"]
    version = store.register("dp", run=model.run_id)
    assert version["metrics"]["privacy"]["epsilon"] == model.metrics["privacy"]["epsilon"]
    assert version["metrics"]["privacy"]["delta"] == 1e-5


def test_a_retrain_adds_its_own_spend_to_the_lineage(tmp_path):
    from loopml.loop.policy import load_policy
    from loopml.loop.retrain import retrain
    from loopml.registry import Store

    store = Store(f"sqlite:///{tmp_path / 'r.db'}", str(tmp_path / "artifacts"))
    table().to_csv(tmp_path / "train.csv", index=False)  # a retrain reads the champion's rows again
    champion = loopml.Model(config(epochs=2)).fit(str(tmp_path / "train.csv"), progress=False, cache_dir=False)
    store.register("clf", path=champion.save(tmp_path / "v1"))
    store.promote("clf", 1)
    for row in table(120, seed=7).to_dict("records"):
        label = row.pop("label")
        store.add_feedback("clf", label, inputs=row)
    policy = load_policy({"trigger": {"min_feedback": 50}, "data": {"holdout_fraction": 0.3, "min_holdout": 20},
                          "gate": {"metric": "accuracy", "margin": 0.0}})
    decision = retrain(store, "clf", policy, reason="dp test")
    v2 = store.get_version("clf", decision["candidate_version"])["metrics"]["privacy"]
    first = champion.info["training"]["privacy"]
    candidate = loopml.load(store.resolve("clf:2")["path"]).info["training"]["privacy"]
    assert v2["epsilon"] == pytest.approx(candidate["epsilon"]) and v2["epsilon"] <= 4.0
    expected = spent(first["history"] + candidate["history"], 1e-5, "rdp")
    assert v2["cumulative_epsilon"] == pytest.approx(expected)
    assert v2["cumulative_epsilon"] > max(v2["epsilon"], first["epsilon"]) + 0.5
    assert candidate["lineage_history"] == first["history"] + candidate["history"]


def test_data_parallel_training_is_refused(dp_model):
    from loopml.train.trainer import LAUNCHER, Trainer

    token = LAUNCHER.set(object())
    try:
        with pytest.raises(LoopmlError, match="data-parallel"):
            Trainer(copy.deepcopy(dp_model.network), loopml.config.load_config(config()).training)
    finally:
        LAUNCHER.reset(token)


def test_a_network_with_batch_norm_built_elsewhere_is_refused_naming_the_setting():
    from loopml.train.trainer import Trainer

    with pytest.raises(LoopmlError, match="combiner.norm: layer"):
        Trainer(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)), loopml.config.load_config(config()).training)
