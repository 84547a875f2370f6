"""Differential privacy: DP-SGD through Opacus (``training.privacy``).

What runs, per step: rows are drawn by Poisson sampling (each training row independently with
probability q = 1 / steps-per-epoch, as Opacus's DPDataLoader does), every row's gradient is
computed (Opacus's GradSampleModule) and clipped to ``max_grad_norm``, Gaussian noise of std
``noise_multiplier * max_grad_norm`` is added to their sum, which is divided by the expected batch
size (Opacus's DPOptimizer). A step whose sample is empty still adds the noise (the mechanism the
accountant assumes). The noise multiplier is the one that spends ``target_epsilon`` at ``delta`` over
``training.epochs`` epochs at that q (opacus.accountants.utils.get_noise_multiplier); Opacus's
accountant (RDP by default, PRV with ``accountant: prv``) is told every step that ran, and the ε it
computes for them is what loopml records. Early stopping or a time limit only spend less.

Reproducibility: the Poisson batches have every size, and MKL's matrix products round differently with the
thread count at some sizes (a Linear on 5-11 rows: 1 vs 2 threads differ in the last bit), so a DP training
does not follow the fair thread share (train/threads.py, which changes with the other trainings running):
it trains on ``training.threads`` (or LOOPML_THREADS / OMP_NUM_THREADS), else on one thread, and a resumed
run on the count its checkpoint trained with, so it ends with the weights of an uninterrupted run.

The guarantee covers the network's weights. Not covered (computed from the training rows without
noise, stored in the bundle): the preprocessing statistics (number scaling, category vocabularies),
automatic class weights (label counts), the drift reference, the training-split metrics and loss
curves; validation rows (early stopping, model selection) are used as usual; a hyper-parameter search
(``loopml tune``) spends each trial's ε on the same rows, and the chosen model records only its own.
Share the weights (or an ONNX export) alone when the guarantee must hold for everything shared.

Across a lineage (``loopml retrain``): the candidate trains on the champion's rows again, so its
config carries the earlier versions' accountant history (``privacy.earlier``) and the cumulative ε
is the accountant's over all of it (RDP/PRV composition, tighter than adding the ε's). Only the chain of
parents counts: a candidate the gate rejected (still registered) is not in its successor's history.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn import functional as F

from loopml.errors import LoopmlError
from loopml.train.callbacks import Callback

if TYPE_CHECKING:
    from loopml.config import PrivacyConfig, TrainingConfig
    from loopml.train.trainer import Trainer

#: the record's scalars that go into the metrics (metrics["privacy"]: run, registered version, report)
METRIC_KEYS = ("epsilon", "delta", "cumulative_epsilon", "target_epsilon", "noise_multiplier", "sample_rate",
               "steps", "max_grad_norm")


def require_opacus() -> None:
    try:
        import opacus  # noqa: F401
    except ImportError:
        raise LoopmlError("training.privacy needs Opacus: pip install 'loopml[privacy]'") from None


def unsupported_layers(network: nn.Module) -> list:
    """Opacus's objections to ``network``'s layers (its eval/train mode is the trainer's business, not one)."""
    from opacus.validators import ModuleValidator

    return [p for p in ModuleValidator.validate(network, strict=False) if "training mode" not in str(p)]


def dp_safe_network(network: nn.Module) -> nn.Module:
    """The network with layers DP-SGD cannot train replaced by Opacus's equivalents (BatchNorm -> GroupNorm,
    LSTM -> DPLSTM, ...): built the same way when the model is loaded, so its weights fit."""
    require_opacus()
    from opacus.validators import ModuleValidator

    for module in network.modules():  # Opacus's backward hooks see a view: in-place activations break them
        if getattr(module, "inplace", False) is True:
            module.inplace = False
    if not unsupported_layers(network):
        return network
    # Opacus turns BatchNorm1d into GroupNorm(min(32, C), C): on the combiner's [rows, C] input that is one
    # value per group, normalised to 0 (a dead layer). LayerNorm over the C features is the equivalent there.
    for module in list(network.modules()):
        for name, child in module.named_children():
            if isinstance(child, nn.BatchNorm1d):
                setattr(module, name, nn.LayerNorm(child.num_features, elementwise_affine=child.affine))
    fixed = ModuleValidator.fix(network)
    for module in fixed.modules():
        if type(module).__name__ == "DPMultiheadAttention":
            module.__class__ = _padding_mask_attention()
    left = unsupported_layers(fixed)
    if left:
        raise LoopmlError(f"training.privacy: a layer of this network cannot be trained with DP-SGD ({left[0]}); "
                          "choose other encoders or remove training.privacy")
    return fixed


def _padding_mask_attention() -> type:
    """Opacus's DPMultiheadAttention, taking the float padding mask (-inf where padded) that nn.TransformerEncoder
    passes to its attention since torch 2.0; Opacus's masked_fill needs a boolean one."""
    from opacus.layers import DPMultiheadAttention

    class PaddingMaskAttention(DPMultiheadAttention):
        def forward(self, query, key, value, key_padding_mask=None, *args: Any, **kwargs: Any):
            if key_padding_mask is not None and key_padding_mask.is_floating_point():
                key_padding_mask = key_padding_mask < 0
            return super().forward(query, key, value, key_padding_mask, *args, **kwargs)

    return PaddingMaskAttention


def private_loss(model: nn.Module, label_smoothing: float = 0.0) -> Any:
    """The head's loss as a mean of per-row terms (class weights included, not renormalised by the batch's
    weights): each row's gradient then depends on that row alone, which per-row clipping assumes.
    ``label_smoothing`` as in the heads (training.label_smoothing)."""
    from loopml.models.heads import smooth_binary_target
    from loopml.train.soft_targets import head_kind

    kind = head_kind(model)
    head = model.head

    def loss(outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        weights = head.class_weights if head.class_weights.numel() else None
        if kind == "binary":
            w = weights[target.long()] if weights is not None else None
            return F.binary_cross_entropy_with_logits(outputs, smooth_binary_target(target, label_smoothing), weight=w)
        if kind == "category":
            return F.cross_entropy(outputs, target, weight=weights, reduction="none",
                                   label_smoothing=label_smoothing).mean()
        return F.mse_loss(outputs, target)

    return loss


def make_accountant(kind: str) -> Any:
    from opacus.accountants import PRVAccountant, RDPAccountant

    return PRVAccountant() if kind == "prv" else RDPAccountant()


def spent(history: list, delta: float, kind: str) -> float:
    """The accountant's ε for ``history`` [(noise multiplier, sample rate, steps)] at ``delta``; 0 for none."""
    if not history:
        return 0.0
    accountant = make_accountant(kind)
    accountant.history = [(float(s), float(q), int(n)) for s, q, n in history]
    with warnings.catch_warnings():  # "optimal order is the largest alpha": ε is still a valid (looser) bound
        warnings.simplefilter("ignore", UserWarning)
        return float(accountant.get_epsilon(delta))


class PrivateTraining(Callback):
    """DP-SGD for one Trainer: wraps its forward pass and optimizer, samples its batches, counts its steps.

    A callback so its state (the accountant's history) is saved in every checkpoint and a resumed run
    continues the count; it runs first, so the per-epoch ``epsilon`` it logs reaches the history.
    """

    def __init__(self, trainer: Trainer, settings: PrivacyConfig, training: TrainingConfig) -> None:
        require_opacus()
        from opacus import GradSampleModule
        from opacus.optimizers import DPOptimizer

        problems = unsupported_layers(trainer.model)
        if problems:  # a network not built by build_network (which makes it DP-safe)
            raise LoopmlError(f"training.privacy: this network has a layer DP-SGD cannot train ({problems[0]}); "
                              "set combiner.norm: layer or none, or remove training.privacy")
        if trainer.launcher is not None:
            raise LoopmlError("training.privacy runs on one process; data-parallel (Ray) training is not supported "
                              "with DP-SGD: train without the Ray launcher")
        self.settings, self.training = settings, training
        # Opacus's per-row hooks on a first layer whose input needs no gradient: expected, not a problem
        warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed")
        self.module = GradSampleModule(trainer.model, batch_first=True, loss_reduction="mean")
        trainer.forward = self.module
        trainer.loss_fn = private_loss(trainer.model, training.label_smoothing)
        # the noise and the expected batch size are set in ``begin``, once the number of rows is known
        trainer.optimizer = DPOptimizer(trainer.optimizer, noise_multiplier=0.0,
                                        max_grad_norm=settings.max_grad_norm, expected_batch_size=1)
        self.optimizer = trainer.optimizer
        self.accountant = make_accountant(settings.accountant)
        self.rows = 0
        self.steps_per_epoch = 0
        self.sample_rate = 0.0
        self.noise_multiplier = 0.0
        #: torch's CPU threads while training (fixed: see the module's doc); a checkpoint's count on resume
        self.threads: int | None = None
        self._threads_before: int | None = None

    def begin(self, rows: int) -> None:
        """Settle q and the noise for ``rows`` training rows (after a resume: check they are the saved ones)."""
        from opacus.accountants.utils import get_noise_multiplier

        s = self.settings
        if rows < 2:
            raise LoopmlError("training.privacy needs at least 2 training rows")
        if s.delta >= 1 / rows:
            raise LoopmlError(f"training.privacy.delta {s.delta:g} is not below 1 / training rows (1/{rows}): "
                              "set a smaller delta")
        self.rows = rows
        self.steps_per_epoch = -(-rows // self.training.batch_size)
        self.sample_rate = 1 / self.steps_per_epoch
        with warnings.catch_warnings():  # "optimal order is the largest alpha": see ``spent``
            warnings.simplefilter("ignore", UserWarning)
            try:
                self.noise_multiplier = float(get_noise_multiplier(
                    target_epsilon=s.target_epsilon, target_delta=s.delta, sample_rate=self.sample_rate,
                    epochs=self.training.epochs, accountant=s.accountant, epsilon_tolerance=0.01))
            except (ValueError, RuntimeError) as e:  # "budget too low", PRV's floating-point limits
                raise LoopmlError(f"training.privacy: no noise level spends target_epsilon {s.target_epsilon:g} at "
                                  f"delta {s.delta:g} over {self.training.epochs} epochs (Opacus: {e}); raise "
                                  "target_epsilon or delta, or train fewer epochs") from None
        if any((round(sigma, 9), round(q, 12)) != (round(self.noise_multiplier, 9), round(self.sample_rate, 12))
               for sigma, q, _ in self.accountant.history):
            raise LoopmlError("cannot resume this DP training: its privacy settings or training rows changed "
                              "since the checkpoint")
        self.optimizer.noise_multiplier = self.noise_multiplier
        self.optimizer.expected_batch_size = max(1, int(rows * self.sample_rate))
        if self.threads is None:  # not resumed
            from loopml.train.threads import explicit_threads

            self.threads = explicit_threads(self.training.threads) or 1
        self.optimizer.attach_step_hook(self.accountant.get_optimizer_hook_fn(self.sample_rate))

    def batches(self, rows: int, seed: int, epoch: int):
        """One epoch of Poisson-sampled batches: each row in each step with probability q (some steps empty)."""
        generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
        self._pin_threads()  # here: after every callback's on_epoch_begin (the thread share sets its count there)
        for _ in range(self.steps_per_epoch):
            yield torch.nonzero(torch.rand(rows, generator=generator) < self.sample_rate).flatten()

    def empty_step(self) -> None:
        """A step with no row sampled: clipped sum zero, noise added, counted by the accountant."""
        self.optimizer.zero_grad(set_to_none=True)
        for p in self.optimizer.params:
            p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)
        self.optimizer.step()

    # -- what was spent --------------------------------------------------------------------------
    @property
    def epsilon(self) -> float:
        return spent(self.accountant.history, self.settings.delta, self.settings.accountant)

    def record(self) -> dict:
        """What the training spent, for the model's info, metrics, run and registered version."""
        s = self.settings
        history = [[float(a), float(b), int(c)] for a, b, c in self.accountant.history]
        epsilon = self.epsilon
        lineage = [list(h) for h in s.earlier] + history
        cumulative = None if s.earlier_without_dp else (spent(lineage, s.delta, s.accountant) if s.earlier else epsilon)
        return {"epsilon": epsilon, "delta": s.delta, "cumulative_epsilon": cumulative,
                "target_epsilon": s.target_epsilon, "accountant": s.accountant,
                "noise_multiplier": self.noise_multiplier, "sample_rate": self.sample_rate,
                "steps": sum(h[2] for h in history), "max_grad_norm": s.max_grad_norm,
                "expected_batch_size": self.optimizer.expected_batch_size, "rows": self.rows,
                "sampling": "poisson", "history": history, "lineage_history": lineage,
                "earlier_without_dp": s.earlier_without_dp}

    # -- callback --------------------------------------------------------------------------------
    def on_epoch_end(self, trainer: Trainer, logs: dict) -> None:
        # the epoch's validation loss ran on the pinned threads too: it steers the schedule and early stopping
        self._unpin_threads()
        logs["epsilon"] = self.epsilon

    def on_train_end(self, trainer: Trainer) -> None:
        self._release(trainer)

    def on_train_abort(self, trainer: Trainer) -> None:
        self._release(trainer)

    def _release(self, trainer: Trainer) -> None:
        """The plain network again: hooks off, per-row gradients dropped, torch's thread count given back."""
        self._unpin_threads()
        self.module._close()
        trainer.forward = trainer.model

    def _pin_threads(self) -> None:
        if self.threads is None:
            return
        if self._threads_before is None:
            self._threads_before = torch.get_num_threads()
        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)

    def _unpin_threads(self) -> None:
        if self._threads_before is not None:
            if torch.get_num_threads() != self._threads_before:
                torch.set_num_threads(self._threads_before)
            self._threads_before = None

    def state_dict(self) -> dict:
        return {"history": [[float(a), float(b), int(c)] for a, b, c in self.accountant.history],
                "threads": self.threads}

    def load_state_dict(self, state: dict) -> None:
        self.accountant.history = [(float(a), float(b), int(c)) for a, b, c in state["history"]]
        self.threads = state.get("threads")  # None in a checkpoint of an older loopml: chosen in ``begin``


def private_training(trainer: Trainer, training: TrainingConfig) -> PrivateTraining | None:
    """The DP-SGD seam of a Trainer: None without ``training.privacy``."""
    if training.privacy is None:
        return None
    return PrivateTraining(trainer, training.privacy, training)


def privacy_metrics(info: dict) -> dict:
    """``{"privacy": {...scalars}}`` from a learner's info (empty without DP): what the metrics keep."""
    record = info.get("privacy")
    if not isinstance(record, dict):
        return {}
    return {"privacy": {k: record[k] for k in METRIC_KEYS if isinstance(record.get(k), (int, float))}}


def carry_spend(config: dict, champion: Any) -> dict:
    """A retrain's candidate config: with DP, the champion lineage's accountant history goes into
    ``training.privacy.earlier`` so the candidate's cumulative ε composes it."""
    privacy = (config.get("training") or {}).get("privacy")
    if not isinstance(privacy, dict):
        return config
    record = (champion.info.get("training") or {}).get("privacy")
    if isinstance(record, dict):
        privacy = {**privacy, "earlier": record.get("lineage_history") or record.get("history") or [],
                   "earlier_without_dp": bool(record.get("earlier_without_dp"))}
    else:  # the champion learned these rows without DP
        privacy = {**privacy, "earlier": [], "earlier_without_dp": True}
    return {**config, "training": {**config["training"], "privacy": privacy}}
