"""Schedules stepped per optimizer step (cosine, onecycle, fractional warm-up), epochs planned into max_time,
and label smoothing (issue 19)."""

import math
import types

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import loopml
from loopml.config import SchedulerConfig, TrainingConfig, load_config
from loopml.errors import LoopmlError
from loopml.models.heads import HEADS
from loopml.train import trainer as trainer_module
from loopml.train.callbacks import Callback, Checkpoint, History
from loopml.train.optim import CurveSchedule, Schedule, make_schedule
from loopml.train.soft_targets import training_loss
from loopml.train.trainer import LAUNCHER, TensorData, Trainer

ROWS, BATCH = 64, 16  # 4 optimizer steps per epoch


class Tiny(nn.Module):
    def __init__(self, kind: str = "category", classes: int = 3, class_weights=None) -> None:
        super().__init__()
        self.body = nn.Linear(4, 8)
        self.head = HEADS.get(kind)(8, classes, class_weights)

    def forward(self, inputs):
        return self.head(torch.relu(self.body(inputs["x"])))

    def loss(self, outputs, target):
        return self.head.loss(outputs, target)


def _data(seed: int = 0) -> tuple[TensorData, TensorData]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(ROWS + 16, 4, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return TensorData({"x": x[:ROWS]}, y[:ROWS]), TensorData({"x": x[ROWS:]}, y[ROWS:])


class StepLrs(Callback):
    """The lr each optimizer step ran with (group 0)."""

    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_batch_end(self, trainer, step, loss) -> None:
        self.lrs.append(trainer.optimizer.param_groups[0]["lr"])


def _training(**settings) -> TrainingConfig:
    base = {"epochs": 6, "batch_size": BATCH, "grad_clip": None, "early_stopping": {"patience": 0},
            "optimizer": {"type": "sgd", "lr": 0.1}}
    return TrainingConfig.model_validate({**base, **settings})


def _fit(training: TrainingConfig, *extra: Callback) -> tuple[Trainer, StepLrs]:
    torch.manual_seed(0)
    lrs = StepLrs()
    trainer = Trainer(Tiny(), training, [History(), lrs, *extra])
    trainer.fit(*_data())
    return trainer, lrs


# -- per-step schedules ---------------------------------------------------------------------------------------
def test_cosine_per_step_follows_the_closed_form_curve():
    trainer, lrs = _fit(_training(scheduler={"type": "cosine", "interval": "step", "warmup_epochs": 0.5,
                                             "min_lr": 1e-4}))
    spe, total, warm = 4, 24, 2  # steps per epoch, steps, warm-up steps (half an epoch)
    assert len(lrs.lrs) == total
    assert lrs.lrs[:warm] == pytest.approx([0.01, 0.01 + 0.09 * 0.5])  # linear from lr/10, per step
    expected = [1e-4 + (0.1 - 1e-4) * (1 + math.cos(math.pi * (i - warm) / (total - warm))) / 2
                for i in range(warm, total)]
    assert lrs.lrs[warm:] == pytest.approx(expected)
    assert len(set(lrs.lrs[spe:2 * spe])) == spe  # it changes inside an epoch
    assert trainer.history[-1]["lr"] == pytest.approx(1e-4)  # the lr after the last step: the floor


def test_onecycle_rises_from_lr_over_25_then_anneals_to_min_lr():
    _, lrs = _fit(_training(epochs=10, scheduler={"type": "onecycle", "interval": "step", "min_lr": 1e-5}))
    peak = lrs.lrs.index(max(lrs.lrs))
    assert lrs.lrs[0] == pytest.approx(0.1 / 25) and max(lrs.lrs) == pytest.approx(0.1, rel=1e-2)
    assert peak == 12  # 30% of 40 steps
    assert all(a < b for a, b in zip(lrs.lrs[:peak], lrs.lrs[1:peak + 1], strict=True))
    assert all(a > b for a, b in zip(lrs.lrs[peak:-1], lrs.lrs[peak + 1:], strict=True))
    assert lrs.lrs[-1] < 1e-3


def test_onecycle_per_epoch_changes_only_between_epochs():
    trainer, lrs = _fit(_training(epochs=10, scheduler={"type": "onecycle", "warmup_epochs": 2}))
    per_epoch = [lrs.lrs[i * 4: (i + 1) * 4] for i in range(10)]
    assert all(len(set(e)) == 1 for e in per_epoch)
    assert per_epoch[0][0] == pytest.approx(0.004) and per_epoch[2][0] == pytest.approx(0.1)
    assert trainer.history[-1]["lr"] == pytest.approx(1e-6)


def test_the_default_epoch_interval_keeps_the_torch_schedulers():
    optimizer = torch.optim.SGD(nn.Linear(2, 1).parameters(), lr=0.1)
    assert isinstance(make_schedule(optimizer, SchedulerConfig(type="cosine", warmup_epochs=2), 10), Schedule)
    for settings in ({"interval": "step"}, {"type": "onecycle"}, {"warmup_epochs": 0.5}):
        cfg = SchedulerConfig.model_validate({"type": "cosine", **settings})
        assert isinstance(make_schedule(optimizer, cfg, 10), CurveSchedule)
    assert isinstance(make_schedule(optimizer, SchedulerConfig(type="cosine"), 10, planned=True), CurveSchedule)
    assert isinstance(make_schedule(optimizer, SchedulerConfig(), 10, planned=True), Schedule)  # plateau


def test_step_decay_per_step_matches_per_epoch_at_epoch_starts():
    _, per_step = _fit(_training(scheduler={"type": "step", "interval": "step", "step_size": 2, "gamma": 0.5}))
    _, per_epoch = _fit(_training(scheduler={"type": "step", "step_size": 2, "gamma": 0.5}))
    assert per_step.lrs == pytest.approx(per_epoch.lrs)


class StopAt(Checkpoint):
    """The checkpoint of epoch ``epoch``, then the run dies (what kill -9 leaves)."""

    def __init__(self, directory, epoch: int) -> None:
        super().__init__(directory)
        self.epoch = epoch

    def on_epoch_end(self, trainer, logs) -> None:
        super().on_epoch_end(trainer, logs)
        if logs["epoch"] == self.epoch:
            raise KeyboardInterrupt


@pytest.mark.parametrize("scheduler", [{"type": "cosine", "interval": "step", "warmup_epochs": 1.5},
                                       {"type": "onecycle", "interval": "step"}])
def test_interval_step_resumes_to_the_same_lr_sequence(tmp_path, scheduler):
    training = _training(scheduler=scheduler)
    whole, whole_lrs = _fit(training)
    with pytest.raises(KeyboardInterrupt):
        _fit(training, StopAt(tmp_path, epoch=2))
    torch.manual_seed(0)
    lrs = StepLrs()
    resumed = Trainer(Tiny(), training, [History(), lrs, Checkpoint(tmp_path)])
    assert resumed.resume(tmp_path) and resumed.epoch == 3
    resumed.fit(*_data())
    assert lrs.lrs == whole_lrs.lrs[3 * 4:]  # exactly: the lr is computed from the step's position
    for p, q in zip(whole.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(p, q)


# -- epochs planned into max_time ------------------------------------------------------------------------------
class FakeClock(Callback):
    """The trainer's clock: each optimizer step takes ``seconds`` (``first`` in the first epoch)."""

    def __init__(self, monkeypatch, seconds: float, first: float | None = None) -> None:
        self.now, self.seconds, self.first = 0.0, seconds, seconds if first is None else first
        monkeypatch.setattr(trainer_module, "time", types.SimpleNamespace(perf_counter=lambda: self.now))

    def on_batch_end(self, trainer, step, loss) -> None:
        self.now += self.first if trainer.epoch == 0 else self.seconds


def test_plan_to_max_time_shrinks_the_epochs_and_anneals_by_the_deadline(monkeypatch):
    clock = FakeClock(monkeypatch, seconds=1.0)  # 4 s an epoch
    training = _training(epochs=100, max_time=40, plan_to_max_time=True,
                         scheduler={"type": "cosine", "interval": "step", "min_lr": 1e-4})
    trainer, lrs = _fit(training, clock)
    # 40 s less the 3% margin, at 4 s an epoch: 9 epochs, then the schedule has ended
    assert trainer.epoch == trainer.planned_epochs == 9 and len(lrs.lrs) == 36
    assert [h["planned_epochs"] for h in trainer.history] == [9] * 9
    assert trainer.stop_reason == "planned 9 of 100 epochs to fit the time limit of 40s"
    assert lrs.lrs[-1] < 1e-4 + 0.005 * 0.1 and trainer.history[-1]["lr"] == pytest.approx(1e-4)
    assert lrs.lrs[0] == pytest.approx(0.1)
    assert trainer.plan.record() == {"planned_epochs": 9, "max_epochs": 100, "max_time": 40,
                                     "seconds_per_epoch": 4.0}


def test_the_plan_leaves_out_the_slow_first_epoch(monkeypatch):
    clock = FakeClock(monkeypatch, seconds=1.0, first=3.0)  # 12 s, then 4 s an epoch
    trainer, _ = _fit(_training(epochs=100, max_time=40, plan_to_max_time=True, scheduler={"type": "cosine"}),
                      clock)
    planned = [h["planned_epochs"] for h in trainer.history]
    assert planned[0] == 3  # 12 + 2 * 12 < 38.8: from the first epoch alone
    assert planned[1:] == [7] * (len(planned) - 1)  # 12 + 6 * 4 = 36: the first epoch's cost is not repeated
    assert trainer.epoch == 7 and trainer.history[-1]["lr"] == pytest.approx(1e-6)  # epoch cosine, re-planned


def test_plan_never_exceeds_epochs_and_resume_keeps_it(monkeypatch, tmp_path):
    clock = FakeClock(monkeypatch, seconds=1.0)
    training = _training(epochs=8, max_time=20, plan_to_max_time=True, scheduler={"type": "cosine",
                                                                                  "interval": "step"})
    with pytest.raises(KeyboardInterrupt):
        _fit(training, clock, StopAt(tmp_path, epoch=1))
    resumed = Trainer(Tiny(), training, [History(), clock, Checkpoint(tmp_path)])
    assert resumed.resume(tmp_path) and resumed.planned_epochs == 4 and resumed.schedule.epochs == 4
    assert resumed.plan.elapsed == 8.0
    resumed.fit(*_data())
    assert resumed.epoch == 4 and [h["planned_epochs"] for h in resumed.history] == [4] * 4
    big, _ = _fit(_training(epochs=3, max_time=1000, plan_to_max_time=True, scheduler={"type": "cosine"}), clock)
    assert big.epoch == big.planned_epochs == 3 and big.stop_reason is None


def test_plan_to_max_time_uses_the_budget_capped_max_time(tabular):
    m = loopml.Model(target="label", learner="network", automl={"time_budget": 30},
                     training={"epochs": 2, "plan_to_max_time": True}).fit(tabular, progress=False)
    plan = m.info["training"]["plan"]
    assert 0 < plan["max_time"] <= 30 and plan["max_epochs"] == 2 and plan["planned_epochs"] <= 2


def test_plan_errors_are_one_line():
    with pytest.raises(LoopmlError, match="plan_to_max_time plans the epochs into training.max_time"):
        load_config({"target": "y", "training": {"plan_to_max_time": True}})
    with pytest.raises(LoopmlError, match="set training.max_time"):
        Trainer(Tiny(), _training(plan_to_max_time=True))
    token = LAUNCHER.set(object())
    try:
        with pytest.raises(LoopmlError, match="does not work with --ray"):
            Trainer(Tiny(), _training(plan_to_max_time=True, max_time=10))
    finally:
        LAUNCHER.reset(token)


@pytest.mark.parametrize("scheduler,message", [
    ({"type": "plateau", "interval": "step"}, "plateau follows the validation loss"),
    ({"type": "plateau", "warmup_epochs": 0.5}, "plateau warms up in whole epochs"),
    ({"interval": "batch"}, "training.scheduler.interval: Input should be 'epoch' or 'step'"),
    ({"type": "one_cycle"}, "'cosine', 'plateau' or 'onecycle'"),
    ({"type": "cosine", "warmup_epochs": -1}, "warmup_epochs: Input should be greater than or equal to 0"),
])
def test_bad_schedule_settings_are_one_line_errors(scheduler, message):
    with pytest.raises(LoopmlError, match=message) as error:
        load_config({"target": "y", "training": {"scheduler": scheduler}})
    assert "\n" not in str(error.value)


# -- label smoothing -------------------------------------------------------------------------------------------
def test_label_smoothing_matches_torch_cross_entropy_with_class_weights():
    torch.manual_seed(1)
    outputs, target = torch.randn(10, 3), torch.randint(0, 3, (10,))
    weights = [1.0, 2.0, 0.5]
    model = Tiny(classes=3, class_weights=weights)
    loss = training_loss(model, None, 0.1)(outputs, target)
    assert loss == pytest.approx(float(F.cross_entropy(outputs, target, weight=torch.tensor(weights),
                                                       label_smoothing=0.1)))
    assert loss != pytest.approx(float(training_loss(model, None)(outputs, target)))


def test_binary_label_smoothing_moves_the_target_towards_a_half():
    torch.manual_seed(2)
    logits, target = torch.randn(12), torch.randint(0, 2, (12,)).float()
    model = Tiny(kind="binary", class_weights=[1.0, 3.0])
    w = torch.tensor([1.0, 3.0])[target.long()]
    expected = F.binary_cross_entropy_with_logits(logits, target * 0.8 + 0.1, weight=w) / w.mean()
    assert training_loss(model, None, 0.2)(logits, target) == pytest.approx(float(expected))
    # the same as two-class cross-entropy with label smoothing on the logits [0, z]
    two = torch.stack([torch.zeros_like(logits), logits], dim=1)
    plain = Tiny(kind="binary")
    assert training_loss(plain, None, 0.2)(logits, target) == pytest.approx(
        float(F.cross_entropy(two, target.long(), label_smoothing=0.2)))


def test_distillation_hard_term_is_smoothed():
    from loopml.config import DistillConfig
    from loopml.train.soft_targets import combine, soft_term

    torch.manual_seed(3)
    outputs, hard = torch.randn(6, 3), torch.randint(0, 3, (6,))
    teacher = torch.log_softmax(torch.randn(6, 3), dim=1)
    target = combine(hard, torch.ones(6, dtype=torch.bool), teacher)
    loss = training_loss(Tiny(), DistillConfig(alpha=0.5), 0.1)(outputs, target)
    expected = 0.5 * F.cross_entropy(outputs, hard, label_smoothing=0.1) + 0.5 * soft_term(outputs, teacher,
                                                                                           "category", 2.0)
    assert loss == pytest.approx(float(expected))


def test_label_smoothing_trains_and_refuses_regression(tabular):
    trainer, _ = _fit(_training(epochs=2, label_smoothing=0.1))
    assert trainer.history[-1]["train_loss"] > 0
    with pytest.raises(LoopmlError, match="label_smoothing is for classification"):
        Trainer(Tiny(kind="number", classes=1), _training(label_smoothing=0.1))
    with pytest.raises(LoopmlError, match="label_smoothing is for classification"):
        load_config({"target": {"column": "y", "type": "number"}, "training": {"label_smoothing": 0.1}})
    with pytest.raises(LoopmlError, match="label_smoothing is for classification"):  # inferred a number
        loopml.Model(target="x1", training={"label_smoothing": 0.1}).fit(tabular, progress=False)
    with pytest.raises(LoopmlError, match="less than 0.5"):
        load_config({"target": "y", "training": {"label_smoothing": 0.5}})


def test_dp_sgd_loss_smooths_the_same_way():
    from loopml.train.privacy import private_loss

    torch.manual_seed(4)
    outputs, target = torch.randn(8, 3), torch.randint(0, 3, (8,))
    model = Tiny(classes=3, class_weights=[1.0, 2.0, 1.0])
    expected = F.cross_entropy(outputs, target, weight=torch.tensor([1.0, 2.0, 1.0]), reduction="none",
                               label_smoothing=0.1).mean()
    assert private_loss(model, 0.1)(outputs, target) == pytest.approx(float(expected))
    logits, flags = torch.randn(8), torch.randint(0, 2, (8,)).float()
    binary = Tiny(kind="binary")
    assert private_loss(binary, 0.2)(logits, flags) == pytest.approx(
        float(F.binary_cross_entropy_with_logits(logits, flags * 0.8 + 0.1)))


def test_plan_grows_slowly_once_the_pace_settles_and_shrinks_at_once():
    # a pace that halves at epoch 6 (the other load went away) would double an undamped plan, re-warming the lr
    import itertools

    from loopml.train.plan import GROWTH, RECENT, EpochPlan
    plan, elapsed, plans = EpochPlan(max_time=1000.0, epochs=500), 0.0, []
    for done in range(1, 15):
        elapsed += 20.0 if done < 6 else 10.0
        plans.append(plan.update(done, elapsed))
    for before, after in itertools.pairwise(plans[RECENT:]):
        assert after <= max(before + 1, int(before * (1 + GROWTH)))
    assert plans[-1] > plans[4]  # it does grow towards the faster pace
    slow = plan.update(15, elapsed + 200.0)  # a sudden slow epoch: the plan shrinks in one step
    assert slow < plans[-1]
