"""``diverse`` for a regressor without members: the covering space weighs inputs by their drift and adds the prediction."""

import numpy as np
import pandas as pd
import pytest

import loopml
from loopml.loop import queue
from loopml.loop.queue import rank_candidates


@pytest.fixture(scope="module")
def lone():
    rng = np.random.default_rng(5)
    df = pd.DataFrame({"a": rng.normal(size=400), "b": rng.normal(size=400)})
    df["label"] = 2 * df.a + df.b
    return loopml.Model(target="label", learner={"type": "lightgbm", "n_estimators": 30}).fit(df, progress=False,
                                                                                             cache_dir=False)


def traffic(seed: int = 1) -> pd.DataFrame:
    """``a`` moved out of the training range into two tight groups (3 and 4); ``b`` as in training, wider
    than the gap between the groups: unweighted k-means would split along ``b``."""
    rng = np.random.default_rng(seed)
    a = np.concatenate([rng.normal(3.0, 0.03, 300), rng.normal(4.0, 0.03, 300)])
    return pd.DataFrame({"a": a, "b": rng.normal(size=600)})


def test_two_picks_cover_the_two_groups_of_the_drifted_column(lone):
    frame = traffic()
    picks = rank_candidates(lone, frame, 2, "diverse")
    a = sorted(float(frame.loc[r["index"], "a"]) for r in picks)
    b = [float(frame.loc[r["index"], "b"]) for r in picks]
    assert a[0] < 3.5 < a[1], picks  # one per group of the drifted column ...
    assert all(abs(v) < 0.6 for v in b), picks  # ... each typical of its group, not of one half of b
    assert all(r["reason"].startswith("typical of ") and "around a=" in r["reason"] for r in picks), picks


def test_without_the_drift_weights_the_same_traffic_splits_along_the_undrifted_column(lone, monkeypatch):
    """The test above can fail: with every column weighted 1, k-means cuts ``b`` in half instead."""
    monkeypatch.setattr(queue, "_psi_weights", lambda frame, ref: dict.fromkeys(ref["columns"], 1.0))
    frame = traffic()
    picks = rank_candidates(lone, frame, 2, "diverse")
    assert any(abs(float(frame.loc[r["index"], "b"])) > 0.6 for r in picks), picks


def test_a_labelled_group_leaves_the_other_one_and_psi_weights_fall_back_to_one(lone):
    frame = traffic()
    labelled = frame[frame.a < 3.5].iloc[:5]
    nxt = rank_candidates(lone, frame.drop(index=labelled.index), 1, "diverse", labelled=labelled)
    assert frame.loc[nxt[0]["index"], "a"] > 3.5, nxt


def test_psi_weights_are_the_drift_and_fall_back_to_one_for_an_unmoved_window():
    from loopml.loop import drift

    values = pd.Series(np.random.default_rng(0).normal(size=500))
    ref = {"columns": {"a": drift.column_reference(values, "number"), "b": drift.column_reference(values, "number")}}
    assert queue._psi_weights(pd.DataFrame({"a": values, "b": values}), ref) == {"a": 1.0, "b": 1.0}
    moved = queue._psi_weights(pd.DataFrame({"a": values + 3, "b": values}), ref)
    assert moved["a"] > 1.0 and moved["b"] == 0.0, moved


def test_herding_ranks_the_whole_window_once_with_ordered_scores_and_the_groups_before_a_far_row(lone):
    """Past the first picks herding alternates between the groups; a far row (a = 40) stands for almost nothing
    of the window, so it comes after the rows of both groups' centres; asking for more than the window returns
    each row once."""
    frame = pd.concat([traffic(), pd.DataFrame({"a": [40.0], "b": [0.0]})], ignore_index=True)
    ranked = rank_candidates(lone, frame, 1000, "diverse")
    scores = [r["score"] for r in ranked]
    assert len(ranked) == len(frame) == len({r["index"] for r in ranked})
    assert scores == sorted(scores, reverse=True)
    first = [float(frame.loc[r["index"], "a"]) for r in ranked[:20]]
    assert sum(a < 3.5 for a in first) >= 8 and sum(3.5 < a < 5 for a in first) >= 8, first
    assert [r["index"] for r in ranked].index(600) > 100


def test_herding_spreads_a_small_batch_however_many_labels_exist():
    """5,000 labels in one region of three: a batch of 6 goes to both others, not all to one (each pick would move
    the labelled set by 1/5,000 if the labels counted fully), and the shares claimed stay within the window."""
    from loopml.loop import covering

    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    window = np.vstack([c + rng.normal(scale=0.5, size=(100, 2)) for c in centres])
    known = centres[0] + rng.normal(scale=0.5, size=(5000, 2))
    picks = covering.herd(window, known, 6)
    regions = [int(np.argmin(((centres - window[j]) ** 2).sum(1))) for j, _ in picks]
    assert regions.count(1) >= 2 and regions.count(2) >= 2, regions
    assert sum(share for _, share in picks) <= 1.05, picks  # "~N rows": kernel shares, about the window, not 6x it


def test_the_rows_a_diverse_pick_claims_add_up_to_the_window_and_shrink_with_labels(lone):
    """Each reason's "typical of ~N unlabelled rows" counts the rows nearer to that pick than to any label or other
    pick: over 500 picks of 601 rows they sum to about the window, and where labels cover a group it claims little."""
    import re

    frame = pd.concat([traffic(), pd.DataFrame({"a": [40.0], "b": [0.0]})], ignore_index=True)

    def claims(rows):
        return [int(re.match(r"typical of ~(\d+) ", r["reason"]).group(1)) for r in rows if r["reason"].startswith("typ")]

    everything = claims(rank_candidates(lone, frame, 500, "diverse"))
    assert len(everything) == 500 and sum(everything) <= len(frame) + 500 * 0.5, sum(everything)  # rounding only
    covered = frame[frame.a < 3.5]
    left = claims(rank_candidates(lone, frame.drop(index=covered.index), 20, "diverse", labelled=covered))
    assert sum(left) <= len(frame) - len(covered) + 10, left
