"""Write scikit-learn's bundled breast-cancer table (shipped inside the package, no download) as CSV."""

import sys
from pathlib import Path

from sklearn.datasets import load_breast_cancer

out = Path(sys.argv[1] if len(sys.argv) > 1 else "demo-output/breast_cancer.csv")
out.parent.mkdir(parents=True, exist_ok=True)
frame = load_breast_cancer(as_frame=True).frame
frame["diagnosis"] = frame.pop("target").map({0: "malignant", 1: "benign"})
frame.to_csv(out, index=False)
print(f"wrote {len(frame)} rows to {out}")
