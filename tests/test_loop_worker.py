"""The unattended loop worker (`loopml loop`): cycles, one worker per model, restarts, signals, /metrics, serve."""

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml
from test_loop import RECODED, _feed, _store, make

import loopml
from loopml.cli import main
from loopml.loop.policy import load_policy
from loopml.loop.worker import loop_status, read_state, run_loop, write_state
from loopml.loop.worker_cli import loop_lines
from loopml.registry import db
from loopml.serve.metrics import ServerMetrics

ROOT = Path(__file__).resolve().parents[1]
# a lenient test-set tolerance: a few epochs on 1000 rows are enough to learn the re-coded values
POLICY = {"trigger": {"min_feedback": 100}, "data": {"holdout_fraction": 0.3, "min_holdout": 30, "feedback_weight": 3},
          "gate": {"metric": "accuracy", "margin": 0.01, "max_test_regression": 0.1},
          "train": {"training": {"epochs": 12}}, "loop": {"interval_s": 3600, "monitor_rows": 500}}


@pytest.fixture
def champion_dir(recoded_champion):
    return recoded_champion[1]


def _policy_file(tmp_path: Path, **overrides) -> Path:
    path = tmp_path / "policy.yaml"
    policy = {**POLICY, **overrides}
    path.write_text(yaml.safe_dump(policy))
    return path


def _log_traffic(store, n: int, seed: int) -> None:
    rows = make(n, seed, codes=RECODED).drop(columns=["label"])
    model = loopml.load("clf:1", store=store._url)
    now = time.time()
    store.log_predictions([{"id": f"{seed:08x}{i:024x}", "model_name": "clf", "model_version": 1,
                            "created_at": now - n + i, "inputs": r, "outputs": {"prediction": p}, "latency_ms": 1.0}
                           for i, (r, p) in enumerate(zip(rows.to_dict("records"), model.predict(rows), strict=True))])


def _worker(store_url: str, policy: Path, log: Path, *extra: str, env: dict | None = None) -> subprocess.Popen:
    command = [sys.executable, "-m", "loopml", "loop", "clf", "--store", store_url, "--policy", str(policy), *extra]
    with log.open("w") as out:
        return subprocess.Popen(command, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=out,
                                stderr=subprocess.STDOUT, text=True)


def _wait(condition, timeout: float, what: str, procs=()) -> None:
    deadline = time.time() + timeout
    while not condition():
        dead = [p for p in procs if p.poll() is not None]
        assert not dead and time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


def _no_report(monkeypatch) -> None:
    """In-process retrains skip the candidate's HTML report (its figures cost more than the training here)."""
    monkeypatch.setattr(loopml.Model, "report", lambda self, path, **_: Path(path).write_text("<html></html>"))


def _audit(store) -> None:
    """No version without its decision, no alias move without a decision that promoted to it."""
    decisions = store.list_gate_decisions("clf")
    decided = {d["candidate_version"] for d in decisions if d["candidate_version"] is not None}
    assert {v["version"] for v in store.list_versions("clf")} - {1} <= decided
    promoted = {d["candidate_version"] for d in decisions if d["promoted"]}
    moves = [e for e in store.alias_history("clf", "production") if e["action"] == "promote" and e["from_version"]]
    assert {e["to_version"] for e in moves} <= promoted, (moves, decisions)


# -- one cycle, in process -----------------------------------------------------------------------
def test_a_cycle_monitors_triggers_retrains_and_keeps_the_schedule(champion_dir, tmp_path, capsys, monkeypatch):
    _no_report(monkeypatch)
    store = _store(tmp_path, champion_dir)
    policy = load_policy(POLICY)
    _log_traffic(store, 300, 1)
    _feed(store, make(300, 2, codes=RECODED))
    lines: list[str] = []
    assert run_loop(store, "clf", policy, once=True, echo=lines.append) == "once"
    text = "\n".join(lines)
    assert "cycle 1: 300 predictions, drift in kind" in text and "trigger: 300 new feedback labels (≥ 100) → retraining" \
        in text, text
    assert "cycle 1: candidate clf:2 PROMOTED" in text, text
    assert store.resolve("clf@production")["version"] == 2
    row = read_state(store, "clf")
    assert row["cycles"] == 1 and row["state"]["phase"] == "idle"
    assert row["next_cycle_at"] == pytest.approx(row["last_cycle_at"] + 3600, abs=60)
    kinds = [(d["kind"], d["numbers"].get("event"), d["candidate_version"]) for d in store.list_gate_decisions("clf")]
    assert kinds == [("loop", "trigger", None), ("retrain", None, 2)]
    _audit(store)

    # the next cycle: nothing new to monitor, the decision consumed the feedback
    lines.clear()
    run_loop(store, "clf", policy, once=True, echo=lines.append)
    assert lines[-1] == "cycle 2: no new predictions; no retrain: 0 new feedback labels, no trigger", lines
    assert read_state(store, "clf")["cycles"] == 2 and len(store.list_gate_decisions("clf")) == 2

    # visible: /metrics (read from the store by the server's periodic task) and `loopml monitor`
    metrics = ServerMetrics()
    metrics.observe_loop("clf", loop_status(store, "clf"))
    scraped = metrics.render().decode()
    assert 'loopml_loop_cycles{model="clf"} 2.0' in scraped
    assert 'loopml_decisions_total{kind="retrain",model="clf",outcome="promoted"} 1.0' in scraped
    assert 'loopml_decisions_total{kind="loop",model="clf",outcome="trigger"} 1.0' in scraped
    assert 'loopml_loop_worker_up{model="clf"} 0.0' in scraped
    assert main(["monitor", "clf", "--store", store._url]) == 0
    out = capsys.readouterr().out
    assert "loop: no worker running; 2 cycles, last " in out and "last decisions:" in out
    assert "retrain clf:2 vs :1 PROMOTED" in out, out


def test_the_schedule_resumes_from_the_store(champion_dir, tmp_path):
    store = _store(tmp_path, champion_dir)
    policy = load_policy({**POLICY, "loop": {"monitor_rows": 10}})
    due = time.time() + 30
    write_state(store, "clf", cycles=7, last_cycle_at=time.time() - 10, next_cycle_at=due, state={"phase": "idle"})
    stop, lines = threading.Event(), []
    thread = threading.Thread(target=run_loop, args=(store, "clf", policy), kwargs={"stop_event": stop, "interval": 0.2,
                                                                                    "echo": lines.append})
    thread.start()
    time.sleep(1.5)
    assert read_state(store, "clf")["cycles"] == 7  # not due yet: a restarted worker waits for next_cycle_at
    assert loop_status(store, "clf")["worker"]["pid"] == os.getpid()
    assert "worker" in loop_lines(store, "clf")[0] and "alive" in loop_lines(store, "clf")[0]
    stop.set()
    thread.join(10)
    assert not thread.is_alive() and store.lock_holder("clf", "loop") is None
    write_state(store, "clf", next_cycle_at=time.time() - 1)  # overdue (the worker was down): a cycle at once
    assert run_loop(store, "clf", policy, once=False, stop_event=_set_after(store, 8), interval=0.2) == "stopped"
    assert read_state(store, "clf")["cycles"] >= 8


def _set_after(store, cycles: int) -> threading.Event:
    stop = threading.Event()

    def watch() -> None:
        while read_state(store, "clf")["cycles"] < cycles:
            time.sleep(0.05)
        stop.set()

    threading.Thread(target=watch, daemon=True).start()
    return stop


# -- one worker per model ------------------------------------------------------------------------
def test_two_workers_retrain_once_per_trigger_and_the_standby_takes_over(champion_dir, tmp_path, store_url):
    """A worker process runs the loop, a second worker (this process) stands by; kill -9 of the first: the second
    takes over. One trigger, one retrain attempt. (min_holdout above the feedback: the retrain decides 'not enough
    feedback' at once, so the test pays for no training; the lock, not the training, is what is tested.)"""
    store = _store(tmp_path, champion_dir, store_url)
    # the trigger fires once all 300 labels are in (they arrive one insert at a time)
    fast = {"data": {**POLICY["data"], "min_holdout": 1000}, "loop": {"interval_s": 1, "monitor_rows": 100},
            "trigger": {"min_feedback": 300}}
    policy = _policy_file(tmp_path, **fast)
    log = tmp_path / "w0.log"
    first = _worker(store_url, policy, log, env={"LOOPML_ARTIFACTS": str(tmp_path / "artifacts")})
    stop, lines = threading.Event(), []
    second = threading.Thread(target=run_loop, args=(store, "clf", load_policy(policy)),
                              kwargs={"stop_event": stop, "echo": lines.append, "interval": 0.3})
    try:
        _wait(lambda: "runs the loop" in log.read_text(), 60, "the first worker", [first])
        second.start()
        _wait(lambda: any("standing by" in line for line in lines), 30, "the second worker to stand by", [first])
        _feed(store, make(300, 3, codes=RECODED))
        _wait(lambda: any(d["kind"] == "retrain" for d in store.list_gate_decisions("clf")), 60, "a retrain", [first])
        time.sleep(1.5)  # more cycles of both: neither retrains again for the same feedback
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        _wait(lambda: any("took over the loop" in line for line in lines), 30, "the standby to take over")
        _wait(lambda: read_state(store, "clf")["state"]["pid"] == os.getpid(), 10, "a cycle of the new worker")
        time.sleep(1.0)
    finally:
        stop.set()
        if first.poll() is None:
            first.kill()
            first.wait()
        if second.is_alive():
            second.join(30)
    output = log.read_text() + "\n".join(lines)
    decisions = store.list_gate_decisions("clf")
    triggers = [d for d in decisions if d["kind"] == "loop" and d["numbers"]["event"] == "trigger"]
    retrains = [d for d in decisions if d["kind"] == "retrain"]
    assert len(triggers) == 1 and len(retrains) == 1, output
    assert retrains[0]["reason"].startswith("not enough feedback"), retrains
    assert "retraining" in log.read_text() and not any("retraining" in line for line in lines), output
    assert "Traceback" not in output and store.lock_holder("clf", "loop") is None
    assert not second.is_alive()


# -- restarts and signals ------------------------------------------------------------------------
def test_kill_9_mid_retrain_then_a_restart_redoes_the_cycle(champion_dir, tmp_path, monkeypatch):
    store = _store(tmp_path, champion_dir)
    _feed(store, make(300, 4, codes=RECODED))
    policy = _policy_file(tmp_path)
    pause = tmp_path / "paused"
    env = {"LOOPML_ARTIFACTS": str(tmp_path / "artifacts"), "LOOPML_PAUSE_AT": "retrain.before_decide",
           "LOOPML_PAUSE_FILE": str(pause)}
    victim = _worker(store._url, policy, tmp_path / "killed.log", env=env)
    try:
        _wait(pause.exists, 120, "the worker to reach the pause point before the decision", [victim])
        assert read_state(store, "clf")["state"]["phase"] == "retraining"
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.wait()
    assert [v["version"] for v in store.list_versions("clf")] == [1]  # killed before deciding: nothing registered
    # the restart (here, in this process): the dead worker's locks free at once, its cycle is recorded and redone
    _no_report(monkeypatch)
    lines: list[str] = []
    assert run_loop(store, "clf", load_policy(policy), once=True, echo=lines.append) == "once"
    out = "\n".join(lines)
    assert "cycle 1: interrupted cycle 1 (retraining since " in out and \
        f"pid {victim.pid} on {socket.gethostname()} died): redone" in out, out
    assert "cycle 1: candidate clf:2 PROMOTED" in out, out
    interrupted = [d for d in store.list_gate_decisions("clf") if d["kind"] == "loop" and d["numbers"]["event"] == "interrupted"]
    assert len(interrupted) == 1 and interrupted[0]["reason"].endswith("redone")
    row = read_state(store, "clf")
    assert row["state"]["phase"] == "idle" and row["cycles"] == 2  # the redone cycle 1, then the --once cycle 2
    assert store.resolve("clf@production")["version"] == 2
    _audit(store)


# -- serve --loop-policy -------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _training(store) -> bool:
    with store.engine.connect() as c:
        return c.execute(sa.select(sa.func.count()).select_from(db.run_metrics)).scalar() >= 2


def test_serve_runs_the_worker_beside_it_and_sigterm_stops_both_mid_training(champion_dir, tmp_path, capsys):
    """`serve --loop-policy`: the worker is its own process, visible on /metrics; SIGTERM to the server while the
    worker trains: the server stops it (SIGTERM, waits), training is interrupted and recorded, locks released."""
    store = _store(tmp_path, champion_dir)
    port = _free_port()
    assert main(["serve", str(champion_dir), "--port", str(port), "--loop-policy", str(_policy_file(tmp_path))]) == 2
    assert "--loop-policy needs a registered model" in capsys.readouterr().err
    _feed(store, make(300, 5, codes=RECODED))
    policy = _policy_file(tmp_path, loop={"interval_s": 1, "monitor_rows": 100}, train={"training": {"epochs": 400}})
    log = tmp_path / "serve.log"
    with log.open("w") as output:
        server = subprocess.Popen([sys.executable, "-m", "loopml", "serve", "clf@production", "--store", store._url,
                                   "--port", str(port), "--monitor-interval", "0.5", "--loop-policy", str(policy)],
                                  cwd=ROOT, env={**os.environ, "LOOPML_ARTIFACTS": str(tmp_path / "artifacts")},
                                  stdout=output, stderr=subprocess.STDOUT, text=True)

    def scraped() -> str:
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        except OSError:
            return ""

    try:
        _wait(lambda: _training(store), 120, "the worker to train", [server])
        _wait(lambda: 'loopml_decisions_total{kind="loop",model="clf",outcome="trigger"} 1.0' in scraped(), 30,
              "the loop on /metrics", [server])
        assert 'loopml_loop_worker_up{model="clf"} 1.0' in scraped()
        holder = store.lock_holder("clf", "loop")
        assert holder is not None and holder["pid"] != server.pid  # its own process, not the server's
        assert read_state(store, "clf")["state"]["phase"] == "retraining"
        code = _stop(server, timeout=90)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    out = log.read_text()
    assert code == 0 and "Traceback" not in out, out
    assert "loop clf: stopped by SIGTERM; loop lock released" in out and "loop worker stopped (exit 0" in out, out
    last = store.list_gate_decisions("clf")[-1]
    assert last["kind"] == "retrain" and last["reason"] == "failed: StopRequested: stopped by SIGTERM", last
    assert store.lock_holder("clf", "loop") is None and store.lock_holder("clf", "retrain") is None
    assert [r["status"] for r in store.list_runs()] == ["killed"]
    assert [v["version"] for v in store.list_versions("clf")] == [1]
    state = read_state(store, "clf")["state"]
    assert state["phase"] == "retraining" and state["stopped"] == "stopped by SIGTERM"  # redone at the next start


def _children(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of the live processes whose parent is ``pid`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append((int(entry.name), cmdline))
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="counts processes in /proc")
def test_serve_with_two_workers_starts_one_loop_worker_and_sigterm_stops_it(champion_dir, tmp_path):
    """`serve --workers 2 --loop-policy`: exactly one loop worker (not one per uvicorn worker), the server answers,
    and SIGTERM to the server stops the loop worker with it (no orphan left cycling on the store)."""
    store = _store(tmp_path, champion_dir)
    port = _free_port()
    policy = _policy_file(tmp_path, trigger={"min_feedback": 10**6}, loop={"interval_s": 1, "monitor_rows": 100})
    log = tmp_path / "serve.log"
    with log.open("w") as output:
        server = subprocess.Popen([sys.executable, "-m", "loopml", "serve", "clf@production", "--store", store._url,
                                   "--port", str(port), "--workers", "2", "--monitor-interval", "0",
                                   "--log-durability", "none", "--loop-policy", str(policy)],
                                  cwd=ROOT, env={**os.environ, "LOOPML_ARTIFACTS": str(tmp_path / "artifacts")},
                                  stdout=output, stderr=subprocess.STDOUT, text=True)

    def loop_workers() -> list[int]:
        mine = [server.pid] + [p for p, _ in _children(server.pid)]
        return [p for parent in mine for p, cmd in _children(parent) if " -m loopml loop clf " in f"{cmd} "]

    def answered() -> bool:
        body = b'{"a": 0.5, "b": 1.0, "kind": "alpha"}'
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/models/clf/predict", data=body,
                                         headers={"content-type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=5) as r:
                return r.status == 200 and b'"prediction"' in r.read()
        except OSError:
            return False

    try:
        _wait(answered, 120, "the server to answer", [server])
        _wait(lambda: (read_state(store, "clf") or {}).get("cycles", 0) >= 2, 60, "two loop cycles", [server])
        workers = loop_workers()
        assert len(workers) == 1, (workers, log.read_text())
        holder = store.lock_holder("clf", "loop")
        assert holder is not None and holder["pid"] == workers[0]
        for _ in range(3):
            assert answered()
        code = _stop(server, timeout=90)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    out = log.read_text()
    assert code == 0 and "Traceback" not in out, out
    assert out.count("loop worker started") == 1 and "loop worker stopped (exit 0" in out, out
    deadline = time.time() + 10
    while Path(f"/proc/{workers[0]}").exists() and time.time() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{workers[0]}").exists() or "Z" in Path(f"/proc/{workers[0]}/stat").read_text().split()[2]
    assert store.lock_holder("clf", "loop") is None


def test_the_servers_supervisor_starts_a_killed_worker_again_and_stops_it_for_good(monkeypatch):
    """``serve --loop-policy``: a worker killed with -9 is started again (one line), and stopping the server stops
    the new one; a stop during the pause before a restart starts nothing."""
    from loopml.loop import worker_cli

    monkeypatch.setattr(worker_cli, "WATCH_S", 0.05)
    monkeypatch.setattr(worker_cli, "RESTART_DELAYS_S", (0.1, 30.0))
    started: list[subprocess.Popen] = []

    def start() -> subprocess.Popen:
        started.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"]))
        return started[-1]

    lines: list[str] = []
    supervisor = worker_cli.WorkerSupervisor(start, echo=lines.append)
    try:
        first = supervisor.process
        first.send_signal(signal.SIGKILL)
        deadline = time.monotonic() + 10
        while supervisor.process is first and time.monotonic() < deadline:
            time.sleep(0.05)
        assert supervisor.process is not first and supervisor.restarts == 1
        assert lines[0] == "loop worker exited (code -9); starting it again in 0.1 s"
        assert lines[1].startswith("loop worker started again (pid ")
        # the second quick death waits 30 s: a stop inside that pause starts no third worker
        supervisor.process.send_signal(signal.SIGKILL)
        while len(lines) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lines[2].endswith("starting it again in 30 s")
    finally:
        supervisor.stop()
    assert len(started) == 2 and all(p.poll() is not None for p in started)
