"""Which image network learns most per second of CPU training? (issue 19, the research behind ``airnet``)

A plain-torch loop, outside loopml, so that only the network changes: the CIFAR-10 subset (10,000 JPEGs,
stratified 70/10/20, seed 0), crop 4 + flip, AdamW 3e-3 / wd 5e-4, label smoothing 0.1, a warm-up of 5% of
the budget then a linear decay to zero *by wall-clock time*, so every network gets the same seconds; flip
TTA at test. Networks: ``resnet`` (loopml's [32, 64, 128] ResNet), ``cnn`` (the small CNN), ``air`` (after
airbench94: a frozen 2x2 patch-whitening stem, blocks of conv, max-pool, BN, GELU, conv, BN, GELU), with
widths as suffixes (``air_48_96_192``). Results are appended to bench/results/image_architectures.jsonl.

    python -m bench.image_architectures air --budget 150 [--bf16] [--seed 0]
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

torch.set_num_threads(2)
ROOT = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10_train_subset" / "train"
RESULTS = Path(__file__).resolve().parent / "results" / "image_architectures.jsonl"
CACHE = Path("/tmp/loopml_bench_cifar_subset.npz")


def load():
    cache = CACHE
    if cache.exists():
        d = np.load(cache)
        return d["x"], d["y"]
    xs, ys = [], []
    for ci, c in enumerate(sorted(p.name for p in ROOT.iterdir())):
        for f in sorted((ROOT / c).iterdir()):
            xs.append(np.asarray(Image.open(f).convert("RGB")))
            ys.append(ci)
    x, y = np.stack(xs).transpose(0, 3, 1, 2), np.array(ys)
    np.savez(cache, x=x, y=y)
    return x, y


def split(y, seed=0):
    rng = np.random.default_rng(seed)
    tr, va, te = [], [], []
    for c in np.unique(y):
        idx = rng.permutation(np.where(y == c)[0])
        n = len(idx)
        te += list(idx[: int(0.2 * n)])
        va += list(idx[int(0.2 * n) : int(0.3 * n)])
        tr += list(idx[int(0.3 * n) :])
    return np.array(tr), np.array(va), np.array(te)


MEAN = torch.tensor([0.49, 0.48, 0.45]).view(1, 3, 1, 1)
STD = torch.tensor([0.25, 0.24, 0.26]).view(1, 3, 1, 1)


def prep(x, train, size=32):
    x = x.float() / 255
    if train:
        b = x.shape[0]
        p = 4
        xp = F.pad(x, (p,) * 4, mode="reflect")
        dy = torch.randint(0, 2 * p + 1, (b,))
        dx = torch.randint(0, 2 * p + 1, (b,))
        out = torch.empty_like(x)
        for i in range(b):
            out[i] = xp[i, :, dy[i] : dy[i] + 32, dx[i] : dx[i] + 32]
        x = out
        fl = torch.rand(b) < 0.5
        x = torch.where(fl.view(-1, 1, 1, 1), x.flip(-1), x)
    x = (x - MEAN) / STD
    if size != 32:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x.contiguous(memory_format=torch.channels_last)


def cbr(i, o, s=1):
    return nn.Sequential(nn.Conv2d(i, o, 3, s, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True))


class Block(nn.Module):
    def __init__(s, i, o, st):
        super().__init__()
        s.c1 = cbr(i, o, st)
        s.c2 = nn.Sequential(nn.Conv2d(o, o, 3, 1, 1, bias=False), nn.BatchNorm2d(o))
        s.sc = (
            nn.Identity()
            if st == 1 and i == o
            else nn.Sequential(nn.Conv2d(i, o, 1, st, bias=False), nn.BatchNorm2d(o))
        )

    def forward(s, x):
        return F.relu(s.c2(s.c1(x)) + s.sc(x))


def resnet(w):
    layers = [cbr(3, w[0])]
    c = w[0]
    for k, o in enumerate(w):
        layers.append(Block(c, o, 2 if k else 1))
        c = o
    return nn.Sequential(*layers), c


def cnn(w):
    layers, c = [], 3
    for o in w:
        layers += [cbr(c, o), nn.MaxPool2d(2)]
        c = o
    return nn.Sequential(*layers), c


class AirBlock(nn.Module):
    def __init__(s, i, o):
        super().__init__()
        s.c1 = nn.Conv2d(i, o, 3, padding=1, bias=False)
        s.b1 = nn.BatchNorm2d(o)
        s.c2 = nn.Conv2d(o, o, 3, padding=1, bias=False)
        s.b2 = nn.BatchNorm2d(o)

    def forward(s, x):
        x = F.gelu(s.b1(F.max_pool2d(s.c1(x), 2)))
        return F.gelu(s.b2(s.c2(x)))


class Whiten(nn.Module):
    def __init__(s, width=24):
        super().__init__()
        s.conv = nn.Conv2d(3, width, 2, bias=True)
        s.conv.weight.requires_grad_(False)

    def init(s, x, eps=5e-4):
        c, h, w = x.shape[1:]
        patches = x.unfold(2, 2, 1).unfold(3, 2, 1).transpose(1, 3).reshape(-1, c * 4).double()
        patches = patches - patches.mean(0)
        cov = patches.T @ patches / len(patches)
        ev, evec = torch.linalg.eigh(cov)
        filt = (evec.T / torch.sqrt(ev + eps).view(-1, 1)).view(c * 4, c, 2, 2).transpose(2, 3)
        with torch.no_grad():
            s.conv.weight.copy_(torch.cat([filt, -filt]).float())

    def forward(s, x):
        return F.gelu(s.conv(x))


def airnet(w, whiten=24):
    wt = Whiten(whiten)
    layers = [wt]
    c = 2 * 12 if whiten else 3
    for o in w:
        layers.append(AirBlock(c, o))
        c = o
    return nn.Sequential(*layers), c, wt


class Net(nn.Module):
    def __init__(s, body, c, scale=1.0):
        super().__init__()
        s.body = body
        s.drop = nn.Dropout(0.1)
        s.head = nn.Linear(c, 10)
        s.scale = scale

    def forward(s, x):
        return s.head(s.drop(s.body(x).mean(dim=(2, 3)))) * s.scale


def build(kind):
    wt = None
    if kind.startswith("resnet"):
        body, c = resnet([int(v) for v in kind.split("_")[1:]] or [32, 64, 128])
    elif kind.startswith("cnn"):
        body, c = cnn([int(v) for v in kind.split("_")[1:]] or [32, 64, 128])
    elif kind.startswith("air"):
        body, c, wt = airnet([int(v) for v in kind.split("_")[1:]] or [32, 64, 128])
    return Net(body, c), wt


def evaluate(model, x, y, tta=True):
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), 500):
            xb = prep(torch.from_numpy(x[i : i + 500]), False)
            out = model(xb).softmax(1)
            if tta:
                out = out + model(xb.flip(-1)).softmax(1)
            correct += (out.argmax(1) == torch.from_numpy(y[i : i + 500])).sum().item()
    return correct / len(x)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("kind")
    ap.add_argument("--budget", type=float, default=300)
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--prog", default="", help="progressive: e.g. 16:0.3,24:0.6 (size until time fraction)")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--ema", type=float, default=0.0)
    ap.add_argument("--ls", type=float, default=0.1)
    ap.add_argument("--batch", type=int, default=128)
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    x, y = load()
    tr, va, te = split(y)
    model, wt = build(a.kind)
    if wt is not None:
        wt.init(prep(torch.from_numpy(x[tr[:5000]]), False).contiguous())
    model = model.to(memory_format=torch.channels_last)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=5e-4)
    ema = None
    if a.ema:
        ema = torch.optim.swa_utils.AveragedModel(
            model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(a.ema), use_buffers=True
        )
    prog = [(int(s), float(f)) for s, f in (p.split(":") for p in a.prog.split(",") if p)]
    start = time.perf_counter()
    steps = 0
    epoch = 0
    T = a.budget
    ytr = torch.from_numpy(y)
    while True:
        perm = tr[np.random.permutation(len(tr))]
        model.train()
        frac = (time.perf_counter() - start) / T
        if frac >= 1:
            break
        size = next((s for s, f in prog if frac < f), 32)
        for i in range(0, len(perm) - a.batch + 1, a.batch):
            frac = (time.perf_counter() - start) / T
            if frac >= 1:
                break
            lr = a.lr * (frac / 0.05 if frac < 0.05 else max(0.0, (1 - frac) / 0.95))
            for g in opt.param_groups:
                g["lr"] = lr
            idx = perm[i : i + a.batch]
            xb = prep(torch.from_numpy(x[idx]), True, size)
            yb = ytr[idx]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.bf16):
                loss = F.cross_entropy(model(xb), yb, label_smoothing=a.ls)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
            if ema is not None:
                ema.update_parameters(model)
        epoch += 1
    train_s = time.perf_counter() - start
    final = ema.module if ema is not None else model
    res = dict(
        kind=a.kind,
        budget=a.budget,
        bf16=a.bf16,
        prog=a.prog,
        seed=a.seed,
        ema=a.ema,
        lr=a.lr,
        epochs=epoch,
        steps=steps,
        train_s=round(train_s, 1),
        val=evaluate(final, x[va], y[va]),
        test=evaluate(final, x[te], y[te]),
        test_notta=evaluate(final, x[te], y[te], False),
        params=sum(p.numel() for p in model.parameters()),
    )
    print(json.dumps(res))
    with RESULTS.open("a") as out:
        out.write(json.dumps(res) + "\n")


if __name__ == "__main__":
    main()
