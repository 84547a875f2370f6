import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import loopml
from loopml.data.read import read_table
from loopml.features.image import AugmentConfig
from loopml.models.image_encoders import AirNet, ImageInput, PatchWhitening


def _image(kind: str, rng, size=(16, 16)) -> Image.Image:
    """'bright' images have a light square, 'dark' ones a dark square, on noise."""
    h, w = size
    pixels = rng.integers(60, 120, size=(h, w, 3)).astype(np.uint8)
    y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
    pixels[y : y + h // 2, x : x + w // 2] = 240 if kind == "bright" else 5
    return Image.fromarray(pixels)


@pytest.fixture
def image_folder(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    for kind in ("bright", "dark"):
        (root / kind).mkdir(parents=True)
        for i in range(60):
            size = (16, 16) if i % 3 else (20, 24)  # mixed sizes are resized to the common one
            ext = ".png" if i % 2 else ".jpg"
            _image(kind, rng, size).save(root / kind / f"{i}{ext}")
    return root


def _fit(data, **sections):
    sections.setdefault("training", {"epochs": 6})
    return loopml.Model(target="label", **sections).fit(data, progress=False)


def test_folder_layout_becomes_a_table_and_trains(image_folder):
    table = read_table(image_folder)
    assert list(table.columns) == ["image", "label"] and len(table) == 120
    m = _fit(image_folder)
    assert m.schema.columns[0].type == "image"
    assert m.preprocessor.features["image"].state["size"] == [16, 16]
    assert m.metrics["test"]["accuracy"] >= 0.9


def test_csv_with_relative_paths_and_confinement(image_folder, tmp_path):
    table = read_table(image_folder)
    csv = image_folder / "table.csv"
    table.to_csv(csv, index=False)
    m = _fit(csv)
    assert m.metrics["test"]["accuracy"] >= 0.9
    escaped = table.head(3).assign(image="../../etc/passwd")
    escaped.to_csv(image_folder / "bad.csv", index=False)
    with pytest.raises(loopml.LoopmlError, match="outside the data folder"):
        m.predict(image_folder / "bad.csv")


def test_arrays_in_a_dataframe(image_folder):
    rng = np.random.default_rng(1)
    df = pd.DataFrame({"pixels": [np.asarray(_image(k, rng).convert("L")) for k in ["bright", "dark"] * 50],
                       "label": ["bright", "dark"] * 50})
    m = _fit(df)
    assert m.preprocessor.features["pixels"].state["channels"] == 1
    assert m.metrics["test"]["accuracy"] >= 0.9
    assert list(m.predict(df.head(4))) == ["bright", "dark", "bright", "dark"]


def test_corrupt_and_missing_images(image_folder):
    (image_folder / "dark" / "0.jpg").write_bytes(b"not an image")
    data = (image_folder / "dark" / "1.png").read_bytes()
    (image_folder / "dark" / "1.png").write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(loopml.LoopmlError, match=r"dark/(0\.jpg|1\.png): cannot decode image"):
        _fit(image_folder)
    m = _fit(image_folder, features={"image": {"type": "image", "on_error": "skip"}})
    assert m.info["data_report"]["missing_feature_rows_dropped"] == 2
    table = read_table(image_folder).head(2).assign(image=["bright/missing.png", "bright/3.png"])
    with pytest.raises(loopml.LoopmlError, match="missing.png: file not found"):
        m.predict(table)


def test_augmentation_only_in_training_mode():
    x = torch.randint(0, 255, (8, 3, 16, 16), dtype=torch.uint8)
    aug = AugmentConfig(crop_padding=2, flip=True, rotation=10, color_jitter=0.3, cutout=4)
    layer = ImageInput(3, [0.5] * 3, [0.25] * 3, aug)
    layer.eval()
    assert torch.equal(layer(x), layer(x))
    assert torch.allclose(layer(x), (x.float() / 255 - 0.5) / 0.25)
    layer.train()
    torch.manual_seed(0)
    a, b = layer(x), layer(x)
    assert a.shape == x.shape and not torch.equal(a, b)
    plain = ImageInput(3, [0.5] * 3, [0.25] * 3, AugmentConfig())
    plain.train()
    assert torch.equal(plain(x), (x.float() / 255 - 0.5) / 0.25)  # nothing switched on: no change


@pytest.mark.parametrize("encoder", ["cnn", "resnet", "airnet"])
def test_save_load_identical_predictions(image_folder, tmp_path, encoder):
    m = _fit(image_folder, features={"image": {"type": "image", "encoder": {"type": encoder, "channels": [8, 16]},
                                               "augment": {"flip": True, "crop_padding": 2}}},
             training={"epochs": 3})
    again = loopml.load(m.save(tmp_path / encoder))
    table = read_table(image_folder)
    assert np.array_equal(again.predict_proba(table).to_numpy(), m.predict_proba(table).to_numpy())


def test_patch_whitening_is_fitted_once_from_the_first_training_batch():
    rng = torch.Generator().manual_seed(0)
    # correlated channels and neighbouring pixels, as in photos
    base = torch.randn(64, 1, 17, 17, generator=rng).cumsum(-1)
    x = torch.cat([base, 0.8 * base + 0.2 * torch.randn(64, 1, 17, 17, generator=rng), -base], dim=1)
    stem = PatchWhitening(3).train()
    assert not stem.fitted and stem.output_dim == 24
    stem(x)
    assert stem.fitted
    patches = x.unfold(2, 2, 1).unfold(3, 2, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1, 12).double()
    filters = stem.weight[:12].reshape(12, 12).double()
    projected = (patches - patches.mean(0)) @ filters.T
    variance = projected.var(dim=0)
    # the well-measured directions come out with unit variance (the near-empty ones are damped by EPS)
    assert torch.allclose(variance[variance > 0.5], torch.ones(()).double(), atol=0.05)
    assert (variance > 0.5).sum() >= 6
    first = stem.weight.clone()
    stem(x * 3 + 1)  # a later batch does not refit
    assert torch.equal(stem.weight, first)
    again = PatchWhitening(3)
    again.load_state_dict(stem.state_dict())
    assert again.fitted and torch.equal(again.weight, first)


def test_airnet_takes_tiny_odd_and_grey_images():
    for size in [(1, 1), (1, 7), (3, 3), (28, 28), (31, 17)]:
        net = AirNet(AirNet.Params(channels=[8, 16, 32]), 1, [0.5], [0.25], size=size).train()
        assert net(torch.randint(0, 256, (4, 1, *size), dtype=torch.uint8)).shape == (4, 32)


def test_an_airnet_exports_to_onnx(image_folder, tmp_path):
    # the blocks' pooling mode is fixed at construction: read off the batch's shape it broke the traced export
    from loopml.compress.export import export_model

    m = _fit(image_folder, features={"image": {"type": "image", "encoder": {"type": "airnet", "channels": [8, 16]}}},
             training={"epochs": 2})
    export = export_model(m, tmp_path / "onnx", "onnx")
    assert (export.folder / "model.onnx").exists() and export.max_diff < 1e-2  # the ResNet's differ by ~5e-4 here too


def test_multimodal_table_image_text_number_category(image_folder):
    rng = np.random.default_rng(2)
    table = read_table(image_folder)
    bright = table["label"] == "bright"
    words = np.where(bright, "sunny light day", "night shadow seen")
    table["note"] = [f"{w} number {i % 9}" for i, w in enumerate(words)]
    table["size"] = rng.normal(size=len(table)) + bright * 0.5
    table["shop"] = rng.choice(["a", "b", "c"], size=len(table))
    table.to_csv(image_folder / "table.csv", index=False)
    m = _fit(image_folder / "table.csv", training={"epochs": 4})
    types = {c.name: c.type for c in m.schema.columns}
    assert types == {"image": "image", "note": "text", "size": "number", "shop": "category"}
    assert [type(e).__name__ for e in m.network.encoders] == ["SmallCNN", "BagOfEmbeddings", "Passthrough",
                                                              "CategoryEmbedding"]
    assert m.metrics["test"]["accuracy"] >= 0.9


def test_image_saliency_maps_and_report_thumbnails(image_folder, tmp_path):
    model = _fit(image_folder)
    rows = model.explain(image_folder, [0, 70])
    for row in rows:
        saliency = np.asarray(row["pixels"]["image"]["saliency"])
        assert saliency.shape == (16, 16) and saliency.max() > 0
    evaluations = model.evaluation["evaluations"]
    worst = evaluations["validation"]["worst_errors"] + evaluations["test"]["worst_errors"]
    assert worst and all("image" in r["images"] for r in worst)
    page = model.report(tmp_path / "m" / "report.html", data=image_folder, explain=[0]).read_text()
    assert 'id="explanations"' in page and "saliency" in page
