"""Attacks on shadow / canary rollouts and the post-promotion watch (issue 13): bad policy values, and the
rollout's decision rows not swallowing the retrain trigger's labels. Store-only, no training: fast."""

import time

import pytest

from loopml.errors import LoopmlError
from loopml.loop.policy import load_policy
from loopml.loop.retrain import should_retrain
from loopml.registry import Store


@pytest.mark.parametrize("raw", ["canary(.)", "canary(1.2.3)", "canary(..5)", "canary(5.)x"])
def test_a_malformed_canary_percent_says_what_a_rollout_must_be(raw):
    with pytest.raises(LoopmlError) as e:
        load_policy({"rollout": raw})
    assert "rollout must be direct, shadow, canary or canary(PERCENT)" in str(e.value)
    assert "could not convert" not in str(e.value)


@pytest.mark.parametrize("good,percent", [("canary(5.)", 5.0), ("canary(.5)", 0.5), ("canary( 30 %)", 30.0)])
def test_canary_percent_forms_that_are_numbers_still_parse(good, percent):
    assert load_policy({"rollout": good}).rollout.percent == percent


@pytest.mark.parametrize("field", ["watch_s", "percent"])
def test_an_infinite_watch_or_share_is_refused(field):
    # a watch that never ends keeps its rollout active forever and never records "kept"
    with pytest.raises(LoopmlError) as e:
        load_policy({"rollout": {"mode": "canary", field: float("inf")}})
    assert f"rollout.{field}" in str(e.value)


def test_rollout_and_watch_decisions_do_not_reset_the_label_trigger(tmp_path):
    store = Store(f"sqlite:///{tmp_path}/r.db", str(tmp_path / "artifacts"))
    policy = load_policy({"trigger": {"min_feedback": 5, "on_drift": False}})
    store.add_gate_decision("toy", 2, 1, False, "gate rejected", {})  # the last retrain
    time.sleep(0.01)
    for i in range(6):  # labels that arrive during the trial / watch
        store.add_feedback("toy", "yes", inputs={"x": float(i)})
    time.sleep(0.01)
    store.add_gate_decision("toy", 3, 1, False, "shadow trial rejected", {"state": "rejected"}, kind="rollout")
    store.add_gate_decision("toy", 3, 1, False, "watch ended", {"state": "kept"}, kind="watch")
    fire, why = should_retrain(store, "toy", policy)
    assert fire, why


@pytest.mark.parametrize("section,field", [("rollout", "watch_min_labels"), ("rollout", "min_live_labels"),
                                           ("loop", "monitor_rows"), ("trigger", "min_feedback"),
                                           ("data", "min_holdout"), ("data", "feedback_weight")])
def test_a_huge_count_in_the_policy_is_one_clear_line(section, field):
    # 10**19 overflowed SQLite's LIMIT in every loop cycle (watch_min_labels, monitor_rows); a huge
    # feedback_weight repeated the feedback frame that many times in memory
    with pytest.raises(LoopmlError) as e:
        load_policy({section: {field: 10**19}})
    assert f"{section}.{field}" in str(e.value) and "less than or equal" in str(e.value)


def test_the_watch_query_survives_the_largest_allowed_label_count(tmp_path):
    import sqlalchemy as sa

    from loopml.loop.rollout import advance_rollouts, start_rollout
    from loopml.registry import db

    store = Store(f"sqlite:///{tmp_path}/r.db", str(tmp_path / "artifacts"))
    now = time.time()
    with store.writer.begin() as c:
        c.execute(db.registered_models.insert().values(name="toy", created_at=now))
        c.execute(db.aliases.insert().values(name="toy", alias="production", version=2, updated_at=now))
    start_rollout(store, "toy", alias="production", candidate=2, champion=1, mode="direct", state="watching",
                  watch_until=now + 100, numbers={"promoted_at": now})
    biggest = {"watch_min_labels": 10**9, "min_live_labels": 10**9}
    assert advance_rollouts(store, "toy", load_policy({"rollout": {"mode": "direct", **biggest}})) == []
    with store.engine.connect() as c:
        assert c.execute(sa.select(db.rollouts.c.state)).scalar() == "watching"



def test_a_trial_without_labels_times_out_instead_of_blocking_retraining(tmp_path):
    # a candidate that never gets live labels (it failed to load on the server, or nobody labels) must not
    # hold the trigger ("version N is on trial") for ever
    from loopml.loop.rollout import advance_rollouts, list_rollouts, start_rollout

    store = Store(f"sqlite:///{tmp_path}/r.db", str(tmp_path / "artifacts"))
    with store.writer.begin() as c:  # the model's row and alias, without training anything
        from loopml.registry import db

        c.execute(db.registered_models.insert().values(name="toy", created_at=time.time(), latest_version=2))
        c.execute(db.aliases.insert().values(name="toy", alias="production", version=1, updated_at=time.time()))
    policy = load_policy({"rollout": {"mode": "canary", "trial_max_s": 60}, "trigger": {"min_feedback": 1}})
    start_rollout(store, "toy", alias="production", candidate=2, champion=1, mode="canary", percent=10)
    assert not should_retrain(store, "toy", policy)[0]
    assert advance_rollouts(store, "toy", policy) == []  # young: it waits for labels
    changes = advance_rollouts(store, "toy", policy, now=time.time() + 120)
    assert [c["to"] for c in changes] == ["rejected"] and "timed out" in changes[0]["reason"]
    assert list_rollouts(store, "toy", ("trial",)) == []
    decision = store.list_gate_decisions("toy")[-1]
    assert decision["kind"] == "rollout" and decision["numbers"]["timed_out"] is True
    store.add_feedback("toy", "yes", inputs={"x": 1.0})
    assert should_retrain(store, "toy", policy)[0]


def test_a_trial_is_visible_in_monitor_and_metrics(tmp_path):
    from loopml.loop.rollout import start_rollout
    from loopml.loop.worker import loop_status
    from loopml.loop.worker_cli import loop_lines
    from loopml.registry import db
    from loopml.serve.metrics import ServerMetrics

    store = Store(f"sqlite:///{tmp_path}/r.db", str(tmp_path / "artifacts"))
    with store.writer.begin() as c:
        c.execute(db.registered_models.insert().values(name="toy", created_at=time.time(), latest_version=3))
        c.execute(db.aliases.insert().values(name="toy", alias="production", version=2, updated_at=time.time()))
    start_rollout(store, "toy", alias="production", candidate=3, champion=2, mode="canary", percent=25,
                  numbers={"candidate_labels": 7})
    assert any(line.startswith("rollout: toy:3 canary 25% trial") and "7 live labels" in line
               for line in loop_lines(store, "toy"))
    metrics = ServerMetrics()
    metrics.observe_loop("toy", loop_status(store, "toy"))
    text = metrics.render().decode()
    metrics.close()
    assert 'loopml_rollout_candidate_version{mode="canary",model="toy",state="trial"} 3.0' in text
    assert 'loopml_rollout_candidate_labels{mode="canary",model="toy",state="trial"} 7.0' in text
    assert 'loopml_rollout_candidate_version{mode="shadow",model="toy",state="trial"} 0.0' in text
