"""Write a CSV table for the Free Spoken Digit Dataset (FSDD) recordings.

    python examples/fsdd_table.py [RECORDINGS_DIR] [OUTPUT_CSV]

Files are named ``<digit>_<speaker>_<index>.wav``; index 0-4 is the official test split. Columns:
audio (file name, relative to the recordings folder: point ``data.media_root`` there, as
examples/fsdd.yaml does), label (the digit), speaker, split (train/test).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RECORDINGS = ROOT / ".." / "shared" / "datasets" / "fsdd" / "recordings"


def fsdd_table(recordings: Path) -> pd.DataFrame:
    rows = []
    for file in sorted(recordings.glob("*.wav")):
        digit, speaker, index = file.stem.split("_")
        rows.append({"audio": file.name, "label": int(digit), "speaker": speaker,
                     "split": "test" if int(index) <= 4 else "train"})
    if not rows:
        raise SystemExit(f"no <digit>_<speaker>_<index>.wav files in {recordings}")
    return pd.DataFrame(rows)


def main() -> None:
    recordings = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_RECORDINGS
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else Path("demo-output/fsdd.csv")
    table = fsdd_table(recordings)
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False)
    counts = table["split"].value_counts().to_dict()
    print(f"wrote {len(table)} rows ({counts.get('train', 0)} train, {counts.get('test', 0)} test) to {out}")


if __name__ == "__main__":
    main()
