"""Named pause points for crash tests: a test sets LOOPML_PAUSE_AT to a point's name and
LOOPML_PAUSE_FILE to a path; the process touches the file there and waits to be killed."""

from __future__ import annotations

import os
import time
from pathlib import Path


def pause_point(name: str) -> None:
    if os.environ.get("LOOPML_PAUSE_AT") != name:
        return
    Path(os.environ["LOOPML_PAUSE_FILE"]).touch()
    while True:
        time.sleep(1)
