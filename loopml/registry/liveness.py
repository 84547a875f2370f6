"""Is the process that owns a run still alive? (pid checks that survive pid reuse on Linux)."""

from __future__ import annotations

import os
from pathlib import Path

#: a process that began this long after the run it is said to own is another process with the same pid
START_SLACK_S = 2.0


def pid_alive(pid: int | None, started_at: float | None = None) -> bool:
    """True while ``pid`` runs on this host; with ``started_at`` (epoch s), False for a reused pid."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        pass
    except OSError:
        return False
    state, began = _proc_stat(pid)
    if state in ("Z", "X"):  # a zombie has finished: only its exit status is left
        return False
    return not (began is not None and started_at is not None and began > started_at + START_SLACK_S)


def _proc_stat(pid: int) -> tuple[str | None, float | None]:
    """(state letter, start time in epoch seconds) from /proc; (None, None) where there is no /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
    except (OSError, StopIteration, ValueError, IndexError):
        return None, None
    fields = stat[stat.rindex(")") + 2:].split()  # the command name may hold spaces and parentheses
    try:
        return fields[0], boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (IndexError, ValueError, OSError):
        return fields[0] if fields else None, None
