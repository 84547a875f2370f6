"""A command that fails on a missing input says so before importing the training stack (torch)."""

import subprocess
import sys

import pytest

CHECK = """
import sys
from loopml.cli import main
rc = main({argv!r})
print("RC", rc, "TORCH", "torch" in sys.modules)
"""


@pytest.mark.parametrize("argv,message", [
    (["train", "--data", "nope.csv", "--target", "y"], "error: file not found: nope.csv"),
    (["train", "--data", "{data}", "--config", "nope.yaml"], "error: config file not found: nope.yaml"),
    (["cv", "--data", "nope.csv", "--target", "y"], "error: file not found: nope.csv"),
    (["describe", "--data", "nope.csv", "--target", "y"], "error: file not found: nope.csv"),
])
def test_missing_input_is_reported_without_importing_torch(tmp_path, argv, message):
    data = tmp_path / "d.csv"
    data.write_text("a,y\n1,0\n2,1\n")
    argv = [a.format(data=data) for a in argv]
    out = subprocess.run([sys.executable, "-c", CHECK.format(argv=argv)], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60)
    assert "RC 2 TORCH False" in out.stdout, out.stdout + out.stderr
    assert message in out.stderr
    assert "Traceback" not in out.stderr
