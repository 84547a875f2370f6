"""The adult model's report rendered by headless Chromium (offline), as the PNG quoted in the README.

    python -m bench.report_screenshot   ->  bench/results/adult_report/report.html, bench/results/adult_report.png
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import loopml  # noqa: E402
from bench import realdata  # noqa: E402
from bench.common import RESULTS  # noqa: E402

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def main() -> None:
    train, test = realdata.adult()
    model = loopml.Model({"target": {"column": "income", "threshold": "auto"}}).fit(train, test=test, progress=False)
    page = model.report(RESULTS / "adult_report" / "report.html", name="adult")
    shot = RESULTS / "adult_report.png"
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([shutil.which("chromium"), *FLAGS, f"--user-data-dir={profile}", "--window-size=1280,5400",
                        f"--screenshot={shot}", page.as_uri()], check=True, capture_output=True, timeout=180)
    print(f"report {page}, screenshot {shot}")


if __name__ == "__main__":
    main()
