"""The prediction spool: one server process's append-only files of acknowledged prediction rows.

A request's rows are appended (one JSON line per request) before its response is sent; with
``fsync`` the append is also on disk (group commit: every request waiting at that moment shares one
fsync). A segment file is deleted once all of its rows are in the store. Each process holds an
exclusive lock on ``<owner>.lock`` for its lifetime, so a later process (a restart, or a sibling
worker) knows a segment whose lock it can take belongs to a dead process and replays it.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

SEGMENT_BYTES = 32 << 20
SEGMENT_SECONDS = 60.0


class Spool:
    def __init__(self, directory: str | os.PathLike, fsync: bool, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.fsync, self.segment_bytes = fsync, segment_bytes
        self.owner = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self._lock_file = open(self.directory / f"{self.owner}.lock", "w")  # noqa: SIM115 (held for the process's life)
        fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._guard = threading.Lock()
        self.written: dict[int, int] = {}  # segment -> rows appended
        self.committed: dict[int, int] = {}  # segment -> rows in the store
        self.seq = -1
        self._fd = -1
        self._torn = False
        self._open_next()

    def path(self, seq: int) -> Path:
        return self.directory / f"{self.owner}.{seq:08d}.spool"

    def _open_next(self) -> None:
        fd = os.open(self.path(self.seq + 1), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)  # may fail: no state changed
        with self._guard:
            previous = self.seq
            self.seq += 1
            self._fd = fd
            self._opened_at, self._size = time.monotonic(), 0
            self.written[self.seq] = self.committed[self.seq] = 0
        if previous >= 0:
            self._release_if_done(previous)

    def append(self, requests: list[list[dict]]) -> int:
        """Write the rows of several requests in one go (and fsync them); returns their segment."""
        if self._torn or self._size >= self.segment_bytes or \
                (self._size and time.monotonic() - self._opened_at > SEGMENT_SECONDS):
            old = self._fd
            self._open_next()
            self._torn = False
            os.close(old)
        data = b"".join(json.dumps(rows, separators=(",", ":")).encode() + b"\n" for rows in requests)
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view):]
            if self.fsync:
                os.fdatasync(self._fd)
        except OSError:  # disk full: cut what was half-written, or start a new file, so later lines stay whole
            try:
                os.ftruncate(self._fd, self._size)
            except OSError:
                self._torn = True
            raise
        self._size += len(data)
        with self._guard:
            self.written[self.seq] += sum(len(rows) for rows in requests)
        return self.seq

    def mark_committed(self, seq: int, rows: int) -> None:
        with self._guard:
            self.committed[seq] += rows
        self._release_if_done(seq)

    def _release_if_done(self, seq: int) -> None:
        with self._guard:
            done = seq != self.seq and self.committed.get(seq, -1) >= self.written.get(seq, 0)
            if done:
                del self.written[seq], self.committed[seq]
        if done:
            self.path(seq).unlink(missing_ok=True)

    def close(self, everything_committed: bool) -> None:
        """Remove this process's files if everything reached the store; otherwise leave them for replay."""
        os.close(self._fd)
        if everything_committed:
            for seq in list(self.written):
                self.path(seq).unlink(missing_ok=True)
            (self.directory / f"{self.owner}.lock").unlink(missing_ok=True)
        self._lock_file.close()


def orphans(directory: str | os.PathLike, own: str | None = None) -> Iterator[tuple[str, list[Path], object]]:
    """(owner, its segments, its held lock) for every spool owner whose process is gone."""
    directory = Path(directory)
    owners = {p.name.split(".", 1)[0] for p in directory.glob("*.spool")} | {p.stem for p in directory.glob("*.lock")}
    for owner in sorted(owners - {own}):
        lock = open(directory / f"{owner}.lock", "a")  # noqa: SIM115 (closed by release_orphan)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # alive: a sibling worker
            lock.close()
            continue
        yield owner, sorted(directory.glob(f"{owner}.*.spool")), lock


def release_orphan(directory: str | os.PathLike, owner: str, segments: list[Path], lock) -> None:
    for segment in segments:
        segment.unlink(missing_ok=True)
    (Path(directory) / f"{owner}.lock").unlink(missing_ok=True)
    lock.close()


def read_segment(path: Path) -> tuple[list[dict], int]:
    """The rows of a segment, and how many lines were unreadable (a torn last line was never acknowledged)."""
    rows, bad = [], 0
    data = path.read_bytes()
    lines = data.split(b"\n")
    if lines and lines[-1]:
        lines = lines[:-1]  # cut mid-write: its request was never answered
        bad += 1
    for line in lines:
        if not line:
            continue
        try:
            rows.extend(json.loads(line))
        except (ValueError, TypeError):
            bad += 1
    return rows, bad
