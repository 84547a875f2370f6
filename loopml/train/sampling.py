"""Rebalancing the training split with imbalanced-learn: random over/undersampling, SMOTE.

Random sampling picks row indices, so it works for every feature type (text, images, audio).
SMOTE interpolates between neighbours, so it needs tabular inputs: numbers and flags, with
categories handled by SMOTE-NC.
"""

from __future__ import annotations

import numpy as np
import torch

from loopml.errors import LoopmlError
from loopml.train.trainer import TensorData

TABULAR = ("number", "binary", "category")


def class_targets(counts: np.ndarray, method: str, ratio: float) -> dict[int, int]:
    """Rows per class after sampling (imbalanced-learn's dict strategy)."""
    if method == "undersample":
        cap = int(np.ceil(counts[counts > 0].min() / ratio))
        return {c: int(min(n, cap)) for c, n in enumerate(counts) if n}
    floor = int(ratio * counts.max())
    return {c: int(max(n, floor)) for c, n in enumerate(counts) if n}


def resample(train: TensorData, method: str, ratio: float, seed: int, feature_types: dict[str, str]) -> TensorData:
    if method == "none":
        return train
    from imblearn.over_sampling import SMOTE, SMOTENC, RandomOverSampler
    from imblearn.under_sampling import RandomUnderSampler

    y = train.target.long().numpy()
    strategy = class_targets(np.bincount(y), method, ratio)
    if method in ("oversample", "undersample"):
        sampler_cls = RandomOverSampler if method == "oversample" else RandomUnderSampler
        index, _ = sampler_cls(sampling_strategy=strategy, random_state=seed).fit_resample(np.arange(len(y))[:, None], y)
        return TensorData(*train.rows(torch.from_numpy(np.sort(index[:, 0]))))
    other = [col for col, kind in feature_types.items() if kind not in TABULAR]
    if other:
        raise LoopmlError(
            f"target.sampling smote needs tabular features; column '{other[0]}' is {feature_types[other[0]]} "
            "(use sampling: oversample)"
        )
    smallest = int(np.bincount(y)[np.bincount(y) > 0].min())
    if smallest < 2:
        raise LoopmlError("target.sampling smote needs at least 2 training rows of every class")
    # one float matrix, remembering each column's slice and dtype so it can be cut back into tensors
    blocks, layout, categorical, offset = [], [], [], 0
    for col, tensor in train.inputs.items():
        block = tensor.reshape(len(y), -1).double().numpy()
        layout.append((col, offset, block.shape[1], tensor.dtype, tensor.shape[1:]))
        if feature_types[col] == "category":
            categorical.extend(range(offset, offset + block.shape[1]))
        blocks.append(block)
        offset += block.shape[1]
    x = np.concatenate(blocks, axis=1)
    k = min(5, smallest - 1)
    if categorical and len(categorical) < x.shape[1]:
        sampler = SMOTENC(categorical_features=categorical, sampling_strategy=strategy, k_neighbors=k, random_state=seed)
    elif categorical:
        raise LoopmlError("target.sampling smote needs at least one numeric feature (use sampling: oversample)")
    else:
        sampler = SMOTE(sampling_strategy=strategy, k_neighbors=k, random_state=seed)
    x_new, y_new = sampler.fit_resample(x, y)
    inputs = {}
    for col, start, width, dtype, shape in layout:
        values = torch.from_numpy(np.ascontiguousarray(x_new[:, start : start + width]))
        if feature_types[col] == "binary":
            values = values.round()
        inputs[col] = (values.round() if not dtype.is_floating_point else values).to(dtype).reshape(len(y_new), *shape)
    return TensorData(inputs, torch.from_numpy(y_new).to(train.target.dtype))
