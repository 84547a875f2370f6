"""How many CPU threads a training uses: its fair share of the CPUs this process may run on.

torch's default is one thread per core it can see, whatever else runs: four trainings side by side
on two cores then run eight busy-waiting threads and each takes ~7x its fair share of time. The
default here is the CPUs this process may use (scheduler affinity, cgroup CPU quota) divided by
the loopml trainings running at the same time. Those announce themselves with a small pid file in a
per-user runtime folder while they train; a training re-reads that folder at every epoch, so an
early one gives threads back when others start and takes them again when they end.

An explicit setting wins: ``training.threads``, else ``LOOPML_THREADS``, else ``OMP_NUM_THREADS``.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from pathlib import Path

from loopml.train.callbacks import Callback

#: cgroup v2 / v1 files, relative to the cgroup's folder
_V2, _V1_QUOTA, _V1_PERIOD = "cpu.max", "cpu.cfs_quota_us", "cpu.cfs_period_us"


def quota_cpus(cgroup_root: Path = Path("/sys/fs/cgroup"), proc_cgroup: Path = Path("/proc/self/cgroup")) -> int | None:
    """CPUs allowed by the cgroup CPU quota (rounded up), or None when there is no quota."""
    for folder in _cgroup_folders(cgroup_root, proc_cgroup):
        v2 = _read(folder / _V2)
        if v2 is not None:
            parts = v2.split()
            if len(parts) == 2 and parts[0] != "max":
                return _ceil_ratio(parts[0], parts[1])
            continue
        quota, period = _read(folder / _V1_QUOTA), _read(folder / _V1_PERIOD)
        if quota is not None and period is not None and quota.strip() != "-1":
            return _ceil_ratio(quota, period)
    return None


def _cgroup_folders(root: Path, proc_cgroup: Path) -> list[Path]:
    """This process's own cgroup folder first (v2 '0::/path', v1 '...:cpu,cpuacct:/path'), then the root."""
    folders = []
    for line in (_read(proc_cgroup) or "").splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        rel = path.strip().lstrip("/")
        if hierarchy == "0" and controllers == "":
            folders.append(root / rel)
        elif "cpu" in controllers.split(","):
            folders += [root / controllers / rel, root / "cpu" / rel, root / "cpu,cpuacct" / rel]
    folders += [root, root / "cpu", root / "cpu,cpuacct"]
    return list(dict.fromkeys(folders))


def _ceil_ratio(quota: str, period: str) -> int | None:
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    return max(1, math.ceil(q / p)) if q > 0 and p > 0 else None


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by the cgroup quota."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    quota = quota_cpus()
    return max(1, min(cpus, quota) if quota else cpus)


def explicit_threads(configured: int | None = None, environ: dict | None = None) -> int | None:
    """A thread count someone asked for: the config, then LOOPML_THREADS, then OMP_NUM_THREADS."""
    if configured:
        return configured
    environ = os.environ if environ is None else environ
    for name in ("LOOPML_THREADS", "OMP_NUM_THREADS"):
        value = environ.get(name, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return None


def fair_share(cpus: int, trainings: int) -> int:
    """Threads per training when ``trainings`` share ``cpus`` (at least one)."""
    return max(1, cpus // max(1, trainings))


def runtime_dir() -> Path:
    """Per-user folder for the pid files: $XDG_RUNTIME_DIR/loopml, else <tmp>/loopml-<uid>."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    uid = os.getuid() if hasattr(os, "getuid") else 0
    root = Path(base) / "loopml" if base and Path(base).is_dir() else Path(tempfile.gettempdir()) / f"loopml-{uid}"
    return root / "training"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process with that pid: alive, not ours to judge
        return True
    return True


def _owned(folder: Path) -> bool:
    """``folder`` and its parent belong to this user and no one else may write to them."""
    if not hasattr(os, "getuid"):
        return True
    for path in (folder, folder.parent):
        info = path.lstat()
        if info.st_uid != os.getuid() or info.st_mode & 0o022 or path.is_symlink():
            return False
    return True


def live_trainings(folder: Path) -> int:
    """Trainings holding a pid file in ``folder`` whose process still runs (stale files are removed)."""
    count = 0
    with contextlib.suppress(OSError):
        for entry in folder.iterdir():
            if not entry.name.isdigit():
                continue
            if _alive(int(entry.name)):
                count += 1
            else:  # a training killed with -9 left it behind
                with contextlib.suppress(OSError):
                    entry.unlink()
    return count


class ThreadShare(Callback):
    """While training: announce this process, and keep torch's threads at the fair share.

    ``with ThreadShare(cfg.threads) as share:`` around the training, with ``share`` among the
    trainer's callbacks (it re-counts the trainings at each epoch). An explicit thread count is set
    as is, and then nothing is announced. Leaving restores torch's thread count from before.
    """

    def __init__(self, configured: int | None = None, folder: Path | None = None) -> None:
        self.explicit = explicit_threads(configured)
        self.folder = folder or runtime_dir()
        self.cpus = available_cpus()
        self.threads: int | None = None
        self._file: Path | None = None
        self._before: int | None = None

    def __enter__(self) -> ThreadShare:
        import torch

        self._before = torch.get_num_threads()
        if self.explicit:
            self._set(self.explicit)
            return self
        try:
            self.folder.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.folder.mkdir(exist_ok=True, mode=0o700)
            if not _owned(self.folder):  # e.g. /tmp/loopml-<uid> created by someone else: do not trust it
                raise PermissionError(self.folder)
            self._file = self.folder / str(os.getpid())
            self._file.write_text("")
        except OSError:  # no usable runtime folder: count this training alone
            self._file = None
        self.adjust()
        return self

    def adjust(self) -> int:
        if not self.explicit:
            trainings = max(1, live_trainings(self.folder)) if self._file else 1
            self._set(fair_share(self.cpus, trainings))
        return self.threads or 1

    def on_epoch_begin(self, trainer, epoch: int) -> None:
        self.adjust()

    def _set(self, threads: int) -> None:
        if threads == self.threads:
            return
        import torch

        torch.set_num_threads(threads)
        self.threads = threads

    def __exit__(self, *_exc) -> None:
        if self._before is not None and self.threads is not None and self._before != self.threads:
            import torch

            torch.set_num_threads(self._before)
            self.threads = None
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.unlink()
            self._file = None
