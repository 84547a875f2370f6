"""The HTML report: written after train, complete, self-contained, and rendered by a real browser."""

import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
from conftest import make_tabular
from PIL import Image

import loopml
from loopml.cli import main

SECTIONS = ("summary", "data", "learner", "training", "evaluation", "worst-errors", "importance")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def trained_once(tmp_path_factory):
    """One training (8 epochs, and its report with every figure) for the module, in its own store and cache."""
    root = tmp_path_factory.mktemp("report")
    csv = root / "data.csv"
    make_tabular().to_csv(csv, index=False)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("LOOPML_CACHE_DIR", str(root / "cache"))
        env.setenv("LOOPML_STORE", f"sqlite:///{root / 'registry.db'}")
        env.setenv("LOOPML_ARTIFACTS", str(root / "artifacts"))
        assert main(["train", "-d", str(csv), "-t", "label", "-o", str(root / "model"), "-q", "--epochs", "8"]) == 0
    return root / "model", csv


@pytest.fixture
def trained(trained_once, tmp_path):
    """A copy of the module's trained model directory (tests rewrite files in it); the CSV is only read."""
    model_dir, csv = trained_once
    return shutil.copytree(model_dir, tmp_path / "model"), csv


def _images(page: str) -> list[bytes]:
    import base64

    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]


def test_train_writes_a_complete_self_contained_report(trained):
    model_dir, _ = trained
    page = (model_dir / "report.html").read_text()
    for section in SECTIONS:
        assert f'<section id="{section}">' in page
    assert not re.search(r'(src|href)="(https?:)?//', page), "the report must not load anything from the network"
    images = _images(page)
    assert len(images) >= 10
    for png in images:  # every embedded figure decodes to a real, non-blank picture
        from io import BytesIO

        picture = np.asarray(Image.open(BytesIO(png)).convert("L"))
        assert picture.shape[0] > 50 and picture.std() > 5
    figures = {p.stem for p in (model_dir / "figures").iterdir()}
    assert {"loss_curve", "confusion_counts", "confusion_normalized", "roc", "precision_recall", "calibration",
            "threshold_f1", "importance", "class_balance", "lr_schedule", "epoch_time"} <= figures
    assert "Per class" in page and "Inferred schema" in page and "best epoch" in page


def test_report_regression_figures(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 2))
    df = pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "y": 3 * x[:, 0] - x[:, 1] + rng.normal(scale=0.1, size=300)})
    model = loopml.Model(target="y", training={"epochs": 15}).fit(df, progress=False)
    path = model.report(tmp_path / "m" / "report.html")
    figures = {p.stem for p in (path.parent / "figures").iterdir()}
    assert {"predicted_vs_actual", "residuals", "error_by_decile", "importance"} <= figures
    assert model.evaluation["importance"]["features"][0]["feature"] == "a"


def test_report_compare_and_evaluate_on_new_data(trained, tmp_path):
    model_dir, csv = trained
    other = tmp_path / "other"
    assert main(["train", "-d", str(csv), "-t", "label", "-o", str(other), "-q", "--epochs", "2", "--seed", "3"]) == 0
    assert main(["report", str(model_dir), "--compare", str(other), "-o", str(tmp_path / "cmp.html")]) == 0
    page = (tmp_path / "cmp.html").read_text()
    assert 'id="comparison"' in page and "other" in page and "Δ" in page
    assert main(["evaluate", str(model_dir), "-d", str(csv)]) == 0
    evaluated = (model_dir / "report-data.html").read_text()
    assert "Evaluation on data (400 rows)" in evaluated  # the whole file, not the stored test split


def test_report_of_a_loaded_model_is_rebuilt_from_the_directory(trained, tmp_path):
    model_dir, _ = trained
    (model_dir / "report.html").unlink()
    assert main(["report", str(model_dir)]) == 0
    page = (model_dir / "report.html").read_text()
    assert all(f'<section id="{s}">' in page for s in SECTIONS)


def test_report_bad_inputs_are_one_line_errors(trained, tmp_path, capsys):
    model_dir, _ = trained
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert main(["report", str(model_dir), "--cv", str(tmp_path / "missing.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error:") and "Traceback" not in "".join(err)


@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (.ci/run installs it)")
def test_report_renders_in_headless_chromium(trained, tmp_path):
    model_dir, _ = trained
    page = (model_dir / "report.html").read_text()
    # a probe appended to a copy: after load, count the sections and the images that decoded
    probe = ("<script>window.addEventListener('load',()=>{const ok=[...document.images].filter(i=>i.complete&&i.naturalWidth>0);"
             "document.body.setAttribute('data-probe',ok.length+'/'+document.images.length+'/'+"
             "document.querySelectorAll('section').length);});</script>")
    probed = tmp_path / "probed.html"
    probed.write_text(page.replace("</body>", probe + "</body>"))
    common = [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000"]
    dom = subprocess.run([*common, "--dump-dom", probed.as_uri()], capture_output=True, text=True, timeout=120).stdout
    loaded, total, sections = map(int, re.search(r'data-probe="(\d+)/(\d+)/(\d+)"', dom).groups())
    assert loaded == total >= 10 and sections == len(SECTIONS)
    shot = tmp_path / "report.png"
    subprocess.run([*common, "--window-size=1280,4000", f"--screenshot={shot}", (model_dir / "report.html").as_uri()],
                   capture_output=True, timeout=120, check=True)
    picture = np.asarray(Image.open(shot).convert("L"))
    assert picture.shape == (4000, 1280)
    assert picture.std() > 20 and (picture < 128).mean() > 0.01  # text and plots, not a blank page
