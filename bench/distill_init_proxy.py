"""A teacher-free proxy for ``--student-init`` (issue 15): hard-label bag students on ag_news_test.

    python -m bench.distill_init_proxy [word] [wp] [tokens]

No fine-tuned teacher is needed (bench.distill's takes a long CPU time to train and score): the token
vectors come from the *pretrained* all-MiniLM-L6-v2 (each vocabulary token alone, ``[CLS] token [SEP]``,
mean-pooled; what ``static_embeddings.token_vectors`` computes from a frozen MiniLM teacher), PCA'd to 256
and copied in by ``static_embeddings.EmbeddingInit``. Variants, all bag dim 256, 10 epochs, seed 42,
loopml's default split, hard labels only:

- ``word``: loopml's own word tokenizer, random init (the plain bag, wider);
- ``wp``: MiniLM's WordPiece tokenizer (``pretrained_tokenizer: minilm``), random init;
- ``tokens``: MiniLM's tokenizer, embeddings started from MiniLM's token vectors.

Prints one line per variant and writes bench/results/distill_init_proxy.json.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import loopml  # noqa: E402
from bench import realdata  # noqa: E402
from bench.common import write_result  # noqa: E402

CACHE = Path(__file__).resolve().parent / ".cache" / "distill" / "minilm_token_vectors.safetensors"
DIM = 256


def base_vectors() -> torch.Tensor:
    """[30522, 384]: pretrained MiniLM's pooled vector of each vocabulary token alone (cached)."""
    from safetensors.torch import load_file, save_file

    from loopml.models.pretrained import pool_hidden, shared_transformer

    if CACHE.is_file():
        return load_file(CACHE)["vectors"]
    model, out = shared_transformer("minilm"), []
    with torch.inference_mode():
        for begin in range(0, 30522, 512):
            ids = torch.arange(begin, min(30522, begin + 512))
            batch = torch.stack([torch.full_like(ids, 101), ids, torch.full_like(ids, 102)], 1)
            mask = torch.ones_like(batch, dtype=torch.bool)
            out.append(pool_hidden(model(input_ids=batch, attention_mask=mask.long()).last_hidden_state, mask, "mean"))
    vectors = torch.cat(out).contiguous()
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    save_file({"vectors": vectors}, str(CACHE))
    return vectors


def run(name: str, frame) -> dict:
    from loopml.compress.static_embeddings import EmbeddingInit, reduce
    from loopml.config import load_config
    from loopml.train import default_callbacks
    from loopml.train.run import RunOptions, train

    feature = {"type": "text", "encoder": {"type": "bag", "dim": DIM}}
    if name != "word":
        feature["pretrained_tokenizer"] = "minilm"
    config = load_config({"target": "label", "features": {"text": feature}, "training": {"seed": 42, "epochs": 10}})
    model = loopml.Model(config)
    prepared = model._prepare(frame, None, None, cache_dir=False)
    callbacks = [EmbeddingInit({"text": reduce(base_vectors(), DIM)})] if name == "tokens" else []
    start = time.perf_counter()
    model._apply(train(config, prepared, RunOptions(progress=False, make_callbacks=default_callbacks,
                                                    callbacks=callbacks)))
    out = {"variant": name, "validation_accuracy": model.metrics["validation"]["accuracy"],
           "test_accuracy": model.metrics["test"]["accuracy"], "epochs_run": model.info["training"]["epochs_run"],
           "seconds": time.perf_counter() - start}
    print(out, flush=True)
    return out


def main() -> None:
    torch.set_num_threads(1)
    if not realdata.available("ag_news_test"):
        print("ag_news_test: not in ../shared/datasets, skipped")
        return
    frame = realdata.ag_news()
    runs = [run(name, frame) for name in (sys.argv[1:] or ["word", "wp", "tokens"])]
    write_result("distill_init_proxy", {"dim": DIM, "epochs": 10, "seed": 42, "labels": "hard only", "runs": runs})


if __name__ == "__main__":
    main()
