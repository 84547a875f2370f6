"""Masked-language-model pretraining of a small BERT encoder on unlabelled text.

A WordPiece tokenizer is trained on the text, then ``BertForMaskedLM`` learns to recover masked
tokens (BERT's 80/10/10 rule). The output folder is a Hugging Face model directory (config.json,
model.safetensors, tokenizer.json) plus ``pretrain.json``, so ``encoder: {type: pretrained, model: DIR}``
loads it offline like MiniLM.

Resumable exactly: the batch order depends only on (seed, epoch), each step's masks only on
(seed, step), and dropout's generator is saved with the weights, the optimizer and the schedule in
``<output>.partial/last.safetensors`` (every ``CHECKPOINT_SECONDS`` and at each epoch's end), so a
resumed run ends with the same weights as an uninterrupted one. A small held-out slice of the texts
(``VALIDATION_FRACTION``) measures masked-token loss and accuracy after every epoch.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tokenizers import Tokenizer

from loopml.errors import LoopmlError
from loopml.pretrain import SUMMARY, PretrainRequest

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # ids 0..4
PAD, UNK, CLS, SEP, MASK = range(5)
CHECKPOINT_SECONDS = 60.0
LOG_SECONDS = 60.0
VALIDATION_FRACTION = 0.02
VALIDATION_MAX = 500
TOKENIZER_FILE = "tokenizer.json"
SETTINGS_FILE = "settings.json"
#: the checkpointed run's texts (count and hash): --resume on other data would not end where the run would have
DATA_FILE = "data.json"


@dataclass
class MlmSettings:
    epochs: int = 10
    max_time: float | None = None
    seed: int = 42
    batch_size: int = 32
    lr: float = 5e-4
    layers: int = 4
    hidden: int = 256
    max_length: int = 64
    vocab_size: int = 8000
    mask_prob: float = 0.15
    #: warm-up steps as a fraction of all steps, then linear decay to 0
    warmup: float = 0.06
    weight_decay: float = 0.01

    def check(self) -> MlmSettings:
        rules = [("epochs", self.epochs >= 1, "at least 1"), ("batch_size", self.batch_size >= 1, "at least 1"),
                 ("lr", self.lr > 0, "more than 0"), ("layers", 1 <= self.layers <= 24, "between 1 and 24"),
                 ("hidden", 16 <= self.hidden <= 2048, "between 16 and 2048"),
                 ("max_length", 8 <= self.max_length <= 512, "between 8 and 512"),
                 ("vocab_size", 100 <= self.vocab_size <= 200_000, "between 100 and 200000"),
                 ("mask_prob", 0 < self.mask_prob < 1, "between 0 and 1"),
                 ("max_time", self.max_time is None or self.max_time > 0, "more than 0")]
        for name, ok, want in rules:
            if not ok:
                raise LoopmlError(f"--{name.replace('_', '-')} must be {want}; got {getattr(self, name)}")
        if self.hidden % heads(self.hidden):
            raise LoopmlError(f"--hidden {self.hidden} must be a multiple of {heads(self.hidden)} (the attention heads)")
        return self


def heads(hidden: int) -> int:
    """Attention heads: 64 dimensions each as in BERT, at least 2."""
    return max(2, hidden // 64)


# -- text and tokenizer ----------------------------------------------------------------------------
def texts_of(frame: pd.DataFrame, columns: list[str]) -> list[str]:
    """Every non-empty text of the columns (each column's cells are separate documents)."""
    from loopml.data.infer import column_stats, infer_feature_type

    out: list[str] = []
    for column in columns:
        values = frame[column]
        stats = column_stats(values)
        kind = infer_feature_type(values, stats)
        free_text = kind == "text" or (kind == "category" and stats["unique"] > 0.5 * max(1, len(values.dropna())))
        if not free_text:
            raise LoopmlError(f"column '{column}' is not text (it reads as {kind}): mlm pretrains text columns; "
                              "for a table's columns use --method scarf")
        out += [t for t in values.dropna().astype(str) if t.strip()]
    if len(out) < 10:
        raise LoopmlError(f"only {len(out)} non-empty texts in {', '.join(columns)}: mlm needs at least 10")
    return out


def train_tokenizer(texts: list[str], vocab_size: int) -> Tokenizer:
    """A lower-casing BERT-style WordPiece tokenizer that adds [CLS] ... [SEP]."""
    from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(texts, trainer=trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False))
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                       special_tokens=[("[CLS]", CLS), ("[SEP]", SEP)])
    return tok


def encode(tok: Tokenizer, texts: list[str], max_length: int) -> list[np.ndarray]:
    tok.no_padding()
    tok.enable_truncation(max_length)
    return [np.asarray(e.ids, dtype=np.int64) for e in tok.encode_batch(texts)]


def pad_batch(seqs: list[np.ndarray]) -> torch.Tensor:
    width = max(len(s) for s in seqs)
    out = np.full((len(seqs), width), PAD, dtype=np.int64)
    for row, seq in enumerate(seqs):
        out[row, : len(seq)] = seq
    return torch.from_numpy(out)


def mask_tokens(ids: torch.Tensor, prob: float, vocab_size: int, generator: torch.Generator
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, labels): ``prob`` of the real tokens are chosen (at least one per batch); 80% of those
    become [MASK], 10% a random token, 10% stay; labels are -100 everywhere else."""
    candidates = ids > MASK  # never the specials (padding, [CLS], [SEP], ...)
    chosen = (torch.rand(ids.shape, generator=generator) < prob) & candidates
    if not chosen.any() and candidates.any():
        chosen[candidates.nonzero()[0].unbind()] = True
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    roll = torch.rand(ids.shape, generator=generator)
    random_ids = torch.randint(MASK + 1, vocab_size, ids.shape, generator=generator)
    inputs = torch.where(chosen & (roll < 0.8), torch.full_like(ids, MASK), ids)
    inputs = torch.where(chosen & (roll >= 0.8) & (roll < 0.9), random_ids, inputs)
    return inputs, labels


# -- model -----------------------------------------------------------------------------------------
def new_model(settings: MlmSettings, vocab_size: int, seed: int) -> Any:
    from transformers import BertConfig, BertForMaskedLM

    config = BertConfig(vocab_size=vocab_size, hidden_size=settings.hidden, num_hidden_layers=settings.layers,
                        num_attention_heads=heads(settings.hidden), intermediate_size=4 * settings.hidden,
                        max_position_embeddings=settings.max_length, pad_token_id=PAD, type_vocab_size=2)
    torch.manual_seed(seed)
    return BertForMaskedLM(config)


def mlm_loss(model: Any, inputs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean cross-entropy over masked tokens, number of them predicted right); the vocabulary
    projection runs only on the masked positions (most of the cost of a small model otherwise)."""
    hidden = model.bert(input_ids=inputs, attention_mask=(inputs != PAD).long()).last_hidden_state
    where = labels != -100
    logits = model.cls(hidden[where])
    target = labels[where]
    return torch.nn.functional.cross_entropy(logits, target), (logits.argmax(-1) == target).sum()


def save_encoder(model: Any, tok: Tokenizer, folder: Path, max_length: int) -> None:
    """The Hugging Face directory: config.json, model.safetensors, tokenizer.json (+ its config)."""
    from transformers import PreTrainedTokenizerFast

    from loopml.models.pretrained import _quiet_transformers

    with _quiet_transformers():
        model.save_pretrained(folder, safe_serialization=True)
        fast = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(tok.to_str()), model_max_length=max_length,
                                       pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
                                       mask_token="[MASK]")
        fast.save_pretrained(folder)


# -- the loop --------------------------------------------------------------------------------------
def settings_of(request: PretrainRequest) -> MlmSettings:
    given = request.options.given()
    saved = request.checkpoints / SETTINGS_FILE
    if request.resume and saved.is_file():  # the interrupted run's settings; only the time limit may change
        settings = MlmSettings(**json.loads(saved.read_text(encoding="utf-8")))
        changed = sorted(k for k, v in given.items() if k != "max_time" and getattr(settings, k) != v)
        if changed:
            raise LoopmlError(f"--resume continues with the interrupted run's settings; --{changed[0].replace('_', '-')} "
                              f"differs ({getattr(settings, changed[0])} there, {given[changed[0]]} here)")
        settings.max_time = given.get("max_time", settings.max_time)
        return settings.check()
    return MlmSettings(**given).check()


def run(request: PretrainRequest) -> dict:
    """Pretrain, write the encoder folder atomically, return the summary (also its pretrain.json)."""
    from loopml.files import replace_folder
    from loopml.train.device import resolve_device, rng_state, set_rng_state
    from loopml.train.state import load_state, save_state
    from loopml.train.threads import ThreadShare

    settings = settings_of(request)
    texts = texts_of(request.frame, request.columns)
    ckpt = request.checkpoints
    tok_file = ckpt / TOKENIZER_FILE
    data_id = {"texts": len(texts), "sha256": hashlib.sha256(json.dumps(texts).encode()).hexdigest()}
    if request.resume and (ckpt / DATA_FILE).is_file():
        was = json.loads((ckpt / DATA_FILE).read_text(encoding="utf-8"))
        if was != data_id:
            raise LoopmlError(f"--resume needs the interrupted run's data: it had {was.get('texts')} texts, "
                              f"this has {len(texts)}{' (same count, other texts)' if was.get('texts') == len(texts) else ''}")
    state = load_state(ckpt / "last.safetensors") if request.resume else None
    if state is not None and tok_file.is_file():
        tok = Tokenizer.from_file(str(tok_file))
    else:
        tok = train_tokenizer(texts, settings.vocab_size)
        _write_text(tok_file, tok.to_str())
        _write_text(ckpt / SETTINGS_FILE, json.dumps(asdict(settings)))
        _write_text(ckpt / DATA_FILE, json.dumps(data_id))
    vocab = tok.get_vocab_size()
    seqs = encode(tok, texts, settings.max_length)
    order = np.random.default_rng(settings.seed).permutation(len(seqs))
    n_val = min(VALIDATION_MAX, max(1, int(len(seqs) * VALIDATION_FRACTION)))
    val, train = [seqs[i] for i in order[:n_val]], [seqs[i] for i in order[n_val:]]
    device = resolve_device("auto")
    model = new_model(settings, vocab, settings.seed).to(device)
    steps_per_epoch = math.ceil(len(train) / settings.batch_size)
    total = steps_per_epoch * settings.epochs
    optimizer, schedule = _optimizer(model, settings, total)
    step, elapsed, history = 0, 0.0, []
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        set_rng_state(state, device)
        step, elapsed, history = int(state["step"]), float(state["elapsed"]), list(state["history"])
        request.echo(f"resuming at step {step} of {total} (epoch {step // steps_per_epoch + 1})")
    else:
        torch.manual_seed(settings.seed)

    def checkpoint() -> None:
        save_state({"step": step, "elapsed": elapsed, "history": history, "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(), **rng_state(device)},
                   ckpt / "last.safetensors")

    bar = _Progress(request.progress, total, step)
    stop_reason = "all epochs done"
    last_save = time.monotonic()
    # torch's default of a thread per core busy-waits ~10x slower when other trainings share the cores
    share = ThreadShare().__enter__()
    try:
        while step < total:
            share.adjust()
            epoch, first = divmod(step, steps_per_epoch)
            perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(settings.seed * 100_003 + epoch))
            model.train()
            for begin in range(first * settings.batch_size, len(train), settings.batch_size):
                started = time.perf_counter()
                loss = _train_step(model, optimizer, schedule,
                                   [train[i] for i in perm[begin : begin + settings.batch_size].tolist()],
                                   settings, vocab, step, device)
                step += 1
                elapsed += time.perf_counter() - started
                bar.update(step, loss, epoch)
                if step % steps_per_epoch == 0:
                    history.append({"epoch": epoch, "step": step, "train_loss": loss, "elapsed": round(elapsed, 2),
                                    **_validate(model, val, settings, vocab, device)})
                    bar.epoch_line(history[-1], settings.epochs)
                if settings.max_time and elapsed >= settings.max_time and step < total:
                    stop_reason = f"time limit of {settings.max_time:g}s reached at step {step} of {total}"
                    break
                if step % steps_per_epoch == 0 or time.monotonic() - last_save >= CHECKPOINT_SECONDS:
                    checkpoint()
                    last_save = time.monotonic()
            if stop_reason != "all epochs done":
                if step % steps_per_epoch:  # the last epoch was cut short: measure where it stopped
                    history.append({"epoch": epoch, "step": step, "train_loss": loss, "elapsed": round(elapsed, 2),
                                    "partial": True, **_validate(model, val, settings, vocab, device)})
                break
    finally:
        bar.stop()
        share.__exit__(None, None, None)
    summary = {
        "method": "mlm", "description": f"BERT {settings.layers} layers, hidden {settings.hidden}, "
                                         f"vocab {vocab}, {step} steps",
        "usage": f"encoder: {{type: pretrained, model: {request.output}, trainable: all}}",
        "settings": asdict(settings), "vocab_size": vocab, "texts": len(seqs), "validation_texts": n_val,
        "columns": request.columns, "source": request.source, "steps": step, "steps_planned": total,
        "seconds": round(elapsed, 2), "stop_reason": stop_reason, "history": history,
        "device": str(device), "parameters": sum(p.numel() for p in model.bert.parameters()),
    }
    out = Path(request.output)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        save_encoder(model.cpu(), tok, tmp, settings.max_length)
        (tmp / SUMMARY).write_text(json.dumps(summary, indent=2), encoding="utf-8")
        replace_folder(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return summary


def _optimizer(model: Any, settings: MlmSettings, total: int) -> tuple[torch.optim.Optimizer, Any]:
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "LayerNorm" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "LayerNorm" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": settings.weight_decay},
                                   {"params": rest, "weight_decay": 0.0}], lr=settings.lr)
    warmup = max(1, int(total * settings.warmup))

    def factor(step: int) -> float:
        return (step + 1) / warmup if step < warmup else max(0.0, (total - step) / max(1, total - warmup))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _train_step(model: Any, optimizer: torch.optim.Optimizer, schedule: Any, batch: list[np.ndarray],
                settings: MlmSettings, vocab: int, step: int, device: torch.device) -> float:
    generator = torch.Generator().manual_seed(settings.seed * 1_000_003 + step)
    inputs, labels = mask_tokens(pad_batch(batch), settings.mask_prob, vocab, generator)
    loss, _ = mlm_loss(model, inputs.to(device), labels.to(device))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    schedule.step()
    return loss.item()


def _validate(model: Any, val: list[np.ndarray], settings: MlmSettings, vocab: int, device: torch.device) -> dict:
    """Masked-token loss and accuracy on the held-out texts, with the same masks every epoch."""
    model.eval()
    generator = torch.Generator().manual_seed(settings.seed + 7)
    total_loss, right, count = 0.0, 0, 0
    with torch.inference_mode():
        for begin in range(0, len(val), 64):
            inputs, labels = mask_tokens(pad_batch(val[begin : begin + 64]), settings.mask_prob, vocab, generator)
            n = int((labels != -100).sum())
            loss, correct = mlm_loss(model, inputs.to(device), labels.to(device))
            total_loss, right, count = total_loss + float(loss) * n, right + int(correct), count + n
    model.train()
    return {"val_mlm_loss": round(total_loss / max(count, 1), 4), "val_mlm_accuracy": round(right / max(count, 1), 4)}


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class _Progress:
    """A rich bar over all steps with the live loss; one line per epoch when stderr is not a terminal."""

    def __init__(self, enabled: bool, total: int, done: int) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.enabled = enabled
        self.console = Console(file=sys.stderr)
        self.progress = Progress(TextColumn("[bold]mlm epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("loss {task.fields[loss]:.4f}"), TimeElapsedColumn(), console=self.console,
                                 disable=not (enabled and self.console.is_terminal))
        self.progress.start()
        self.task = self.progress.add_task("mlm", total=total, completed=done, epoch=0, loss=0.0)
        self.total, self.last_line = total, time.monotonic()

    def update(self, step: int, loss: float, epoch: int) -> None:
        if step % 4 == 0:
            self.progress.update(self.task, completed=step, loss=loss, epoch=epoch + 1)
        if self.enabled and not self.console.is_terminal and time.monotonic() - self.last_line >= LOG_SECONDS:
            self.last_line = time.monotonic()  # a log (not a terminal) still hears from a long epoch
            print(f"step {step}/{self.total}: loss {loss:.4f}", file=sys.stderr, flush=True)

    def epoch_line(self, logs: dict, epochs: int) -> None:
        if self.enabled and not self.console.is_terminal:
            print(f"epoch {logs['epoch'] + 1}/{epochs}: loss {logs['train_loss']:.4f}  val_mlm_loss "
                  f"{logs['val_mlm_loss']:.4f}  val_mlm_accuracy {logs['val_mlm_accuracy']:.4f}  "
                  f"({logs['elapsed']:.1f}s)", file=sys.stderr, flush=True)

    def stop(self) -> None:
        self.progress.stop()
