"""A command that fails on a missing input says so before importing the training stack (torch)."""

import json
import subprocess
import sys

CASES = [
    (["train", "--data", "nope.csv", "--target", "y"], "error: file not found: nope.csv"),
    (["train", "--data", "d.csv", "--config", "nope.yaml"], "error: config file not found: nope.yaml"),
    (["cv", "--data", "nope.csv", "--target", "y"], "error: file not found: nope.csv"),
    (["describe", "--data", "nope.csv", "--target", "y"], "error: file not found: nope.csv"),
]

# one process runs every case (each costs only the CLI's import), recording torch's presence after each
CHECK = """
import contextlib, io, json, sys
from loopml.cli import main
out = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(argv)
    out.append({"rc": rc, "torch": "torch" in sys.modules, "stderr": err.getvalue()})
print(json.dumps(out))
"""


def test_missing_input_is_reported_without_importing_torch(tmp_path):
    (tmp_path / "d.csv").write_text("a,y\n1,0\n2,1\n")
    argv = json.dumps([a for a, _ in CASES])
    out = subprocess.run([sys.executable, "-c", CHECK, argv], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    results = json.loads(out.stdout.strip().splitlines()[-1])
    for (argv, message), result in zip(CASES, results, strict=True):
        assert result["rc"] == 2, (argv, result)
        assert not result["torch"], f"{argv} imported torch before reporting the missing file"
        assert message in result["stderr"] and "Traceback" not in result["stderr"], (argv, result)
