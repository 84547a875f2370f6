"""The loop, end to end, in one command (``make demo``): train v1 → serve → shifted traffic → label through
the queue → drift → the loop worker retrains, gates, promotes → the server answers with v2.

Data: adult, read in place from DATASETS/adult: ``--data DATASETS``, else $LOOPML_DATASETS, else
../shared/datasets next to the repository. v1 learns from people whose education is HS-grad
or less; the traffic then comes from people with more schooling — a natural shift: the same columns,
other people, and a model that has never seen them. Everything lands in demo-output/loop/ (a folder the
demo made before is replaced; any other non-empty folder is refused).

    python examples/demo_loop.py [--data DATASETS] [--out demo-output/loop] [--keep-serving]

Exit status: 0 when the server ends up answering with v2, 1 when it does not (the lines say why),
2 when the data or a tool is missing. The server and its loop worker are stopped on any exit, Ctrl-C too.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATASETS_ENV = "LOOPML_DATASETS"
MARKER = ".loopml-demo"  # written into --out: only a folder holding it is ever deleted
LEGACY = ("adult_v1.csv", "registry.db", "server.log")  # a folder of a demo from before the marker
POLICY = ROOT / "examples" / "demo_policy.yaml"
COLUMNS = ["age", "workclass", "fnlwgt", "education", "education-num", "marital-status", "occupation",
           "relationship", "race", "sex", "capital-gain", "capital-loss", "hours-per-week", "native-country", "income"]
NAME, TARGET = "adult", "income"
REPLAY, HELD_OUT, LABELS, BATCH = 3000, 1500, 600, 100
WAIT_S = 180.0


class DemoFailed(Exception):
    """A step did not do what the demo needs; the message is the line printed before exiting 1."""


class CannotRun(Exception):
    """Missing data or a refused --out folder: the message is the line printed before exiting 2."""


#: what is running now, so an interruption says only what it stopped
RUNNING: dict[str, bool] = {"server": False}


def step(text: str) -> None:
    print(f"[{time.perf_counter() - STARTED:5.1f}s] {text}", flush=True)


STARTED = time.perf_counter()


def show(path: Path) -> str:
    """A path as the user can paste it: relative to the working directory (the repo under make) when inside it."""
    path = Path(os.path.abspath(path))
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def find_adult(data: Path | None) -> Path:
    """The adult folder: DATASETS/adult, DATASETS given by --data, $LOOPML_DATASETS or ../shared/datasets."""
    if data is not None:
        base, how = data, f"--data {data}"
    elif os.environ.get(DATASETS_ENV):
        base, how = Path(os.environ[DATASETS_ENV]), f"${DATASETS_ENV}={os.environ[DATASETS_ENV]}"
    else:
        base, how = ROOT.parent / "shared" / "datasets", "the default"
    for folder in (base / "adult", base):  # the datasets folder, or the adult folder itself
        if (folder / "adult.data").is_file() and (folder / "adult.test").is_file():
            return folder
    raise CannotRun(f"the demo reads adult.data and adult.test from {show(base / 'adult')} ({how}; not found): "
                    f"point --data DIR or {DATASETS_ENV}=DIR at the folder that holds adult/")


def prepare_out(out: Path) -> None:
    """Empty ``out`` for a new run, deleting it only when absent, empty, or made by this demo (its marker)."""
    if out.exists() or out.is_symlink():
        if not out.is_dir() or out.is_symlink():
            raise CannotRun(f"--out {show(out)} is not a folder: give a new or empty folder")
        if any(out.iterdir()):
            made = (out / MARKER).is_file() or all((out / f).is_file() for f in LEGACY)
            if not made or ROOT.is_relative_to(out.resolve()):
                raise CannotRun(f"--out {show(out)} is not empty and was not made by the demo (no {MARKER} in it): "
                                "give a new or empty folder")
            shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("made by examples/demo_loop.py; the next demo run deletes this folder\n")


def read_adult(data: Path):
    import pandas as pd

    from loopml.data.read import DataConfig, read_table

    cfg = DataConfig(header=False, names=COLUMNS, comment="|")
    train, test = read_table(data / "adult.data", cfg), read_table(data / "adult.test", cfg)
    test[TARGET] = test[TARGET].str.rstrip(".")  # adult.test writes '>50K.'
    return pd.concat([train, test], ignore_index=True)


def records(frame) -> list[dict]:
    import pandas as pd

    return [{k: (None if pd.isna(v) else v.item() if hasattr(v, "item") else v) for k, v in row.items()}
            for row in frame.drop(columns=[TARGET]).to_dict("records")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``loopml serve NAME@production --loop-policy``: the server and, as its own process, the loop worker.
    In a session of its own, so a Ctrl-C reaches only this script, which then stops both in order."""

    def __init__(self, url: str, artifacts: Path, log: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = log.open("w")
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "loopml", "serve", f"{NAME}@production", "--port", str(self.port), "--store", url,
             "--artifacts", str(artifacts), "--loop-policy", str(POLICY), "--monitor-interval", "5", "--threads", "1"],
            env=env, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, seconds: float = 120.0) -> None:
        import httpx

        deadline = time.time() + seconds
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise DemoFailed(f"the server exited ({self.proc.returncode}) before it was ready; see {self.log.name}")
            try:
                if httpx.get(f"{self.base}/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise DemoFailed(f"the server was not ready after {seconds:.0f} s; see {self.log.name}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # the server stops its loop worker, then itself
            try:
                self.proc.wait(90)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):  # its session's leftovers (an orphaned worker)
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()


def accuracy(predicted: list, actual: list) -> float:
    return sum(str(p) == str(a) for p, a in zip(predicted, actual, strict=True)) / max(len(actual), 1)


def demo(data: Path | None, out: Path, keep_serving: bool) -> None:
    import httpx

    import loopml
    from loopml.registry import Store

    adult = find_adult(data)
    prepare_out(out)
    df = read_adult(adult)
    low = df["education-num"] <= 9
    source, traffic = df[low], df[~low].sample(frac=1.0, random_state=0)
    replay, held = traffic.iloc[:REPLAY], traffic.iloc[REPLAY : REPLAY + HELD_OUT]
    source.to_csv(out / "adult_v1.csv", index=False)
    step(f"data: adult, {len(source):,} people with education HS-grad or less → {show(out / 'adult_v1.csv')}; traffic: "
         f"people with more schooling ({REPLAY:,} replayed, {HELD_OUT:,} kept unseen)")

    url, artifacts = f"sqlite:///{Path(os.path.abspath(out)) / 'registry.db'}", Path(os.path.abspath(out)) / "artifacts"
    store = Store(url, str(artifacts))
    v1 = loopml.Model(target=TARGET, learner={"type": "lightgbm"}).fit(out / "adult_v1.csv", progress=False,
                                                                       track="adult-demo", store=store)
    v1.save(out / "v1", report=True)
    store.register(NAME, run=v1.run_id, description="v1: education HS-grad or less")
    store.promote(NAME, 1, reason="first model")
    v1_held = accuracy(v1.predict(held), held[TARGET].tolist())
    step(f"v1 trained (LightGBM) and registered as {NAME}:1@production: accuracy {v1.metrics['test']['accuracy']:.3f} "
         f"on its own test rows, {v1_held:.3f} on the unseen shifted people")

    server = Server(url, artifacts, out / "server.log")
    RUNNING["server"] = True
    try:
        server.wait_ready()
        step(f"serving {NAME}@production at {server.base} with the loop worker beside it (policy {POLICY.name}; "
             f"log {show(out / 'server.log')})")
        client = httpx.Client(base_url=server.base, timeout=60)
        truth, predicted = {}, []
        for begin in range(0, len(replay), BATCH):
            chunk = replay.iloc[begin : begin + BATCH]
            answer = client.post(f"/v1/models/{NAME}/predict", json=records(chunk))
            answer.raise_for_status()
            for p, label in zip(answer.json()["predictions"], chunk[TARGET], strict=True):
                truth[p["prediction_id"]] = label
                predicted.append(p["prediction"])
        step(f"replayed {len(replay):,} shifted rows over HTTP (POST /v1/models/{NAME}/predict): v1 was right on "
             f"{accuracy(predicted, replay[TARGET].tolist()):.1%} of them")

        wait_for_log(store, len(truth))  # the queue then ranks every replayed row: the same labels every run
        labelled, reasons = label_from_queue(client, truth)
        step(f"labelled {labelled} rows the queue asked for (GET /v1/feedback/queue?strategy=uncertainty, then POST "
             f"/v1/feedback with the true label); e.g. '{reasons[0]}'")

        drift_line(url, artifacts, out)

        version, decision = wait_for_promotion(store, client)
        step(f"the loop worker retrained and gated {NAME}:{decision['candidate_version']}: "
             f"{'PROMOTED' if decision['promoted'] else 'REJECTED'} — {decision['reason']}")
        if version != 2:
            raise DemoFailed(f"the server still answers with {NAME}:{version}, not v2")
        answers = []
        for begin in range(0, len(held), BATCH):
            answer = client.post(f"/v1/models/{NAME}/predict", json=records(held.iloc[begin : begin + BATCH])).json()
            if answer["version"] != 2:
                raise DemoFailed(f"a predict answer came from {NAME}:{answer['version']}, not v2")
            answers += [p["prediction"] for p in answer["predictions"]]
        step(f"the server answers with {NAME}:2 (GET /v1/models, every predict answer): accuracy on the "
             f"{len(held):,} unseen shifted people {accuracy(answers, held[TARGET].tolist()):.3f} (v1: {v1_held:.3f})")

        (out / "metrics.txt").write_text(client.get("/metrics").text)
        (out / "openapi.json").write_text(client.get("/openapi.json").text)
        (out / "v2").mkdir()
        shutil.copyfile(Path(store.resolve(f"{NAME}:2")["path"]) / "report.html", out / "v2" / "report.html")
        files = [f"{show(out / f)}{what}" for f, what in [
            ("v1/report.html", ""), ("v2/report.html", " (model reports)"), ("drift.html", " (drift)"),
            ("monitor.txt", ""), ("metrics.txt", " (/metrics)"), ("openapi.json", " (/docs)")]]
        step(f"look at: {', '.join(files)}")
        if keep_serving:
            step(f"serving on: {server.base}/docs and {server.base}/metrics — Ctrl-C to stop")
            while server.proc.poll() is None:
                time.sleep(1)
        else:
            step(f"serve it again (after the export line below): loopml serve {NAME}@production --loop-policy {show(POLICY)}   "
                 f"(then {server.base.rsplit(':', 1)[0]}:8000/docs)")
    finally:
        server.stop()


def wait_for_log(store, n: int, seconds: float = 60.0) -> None:
    """Until the server's prediction log holds all ``n`` answers (it reaches the store a moment after them)."""
    deadline = time.time() + seconds
    while len(store.list_predictions(NAME)) < n:
        if time.time() > deadline:
            raise DemoFailed(f"the prediction log did not reach {n} rows within {seconds:.0f} s")
        time.sleep(0.3)


def label_from_queue(client, truth: dict) -> tuple[int, list[str]]:
    """Ask the queue for the rows a label helps most until ``LABELS`` are labelled; the log reaches the store
    a moment after the answers, so an empty or short queue is asked again."""
    labelled, reasons, deadline = 0, [], time.time() + 60
    while labelled < LABELS:
        if time.time() > deadline:
            raise DemoFailed(f"the queue offered only {labelled} of {LABELS} rows to label within 60 s")
        n = min(300, LABELS - labelled)
        answer = client.get("/v1/feedback/queue", params={"n": n, "strategy": "uncertainty"})
        answer.raise_for_status()
        queue = [item for item in answer.json()["queue"] if item["prediction_id"] in truth]
        if len(queue) < n // 2:  # still flushing: wait for more of the log
            time.sleep(0.5)
            continue
        for item in queue:
            r = client.post("/v1/feedback", json={"prediction_id": item["prediction_id"],
                                                  "label": truth[item["prediction_id"]]})
            r.raise_for_status()
            reasons.append(item["reason"])
        labelled += len(queue)
    return labelled, reasons


def drift_line(url: str, artifacts: Path, out: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LOOPML_ARTIFACTS": str(artifacts)}
    command = [sys.executable, "-m", "loopml", "monitor", NAME, "--store", url, "--last", str(REPLAY),
               "--report", str(out / "drift.html")]
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    (out / "monitor.txt").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise DemoFailed(f"loopml monitor failed (exit {done.returncode}); see {show(out / 'monitor.txt')}")
    lines = done.stdout.splitlines()
    header = next((line.strip() for line in lines if "drift:" in line), "")
    cells = [[c.strip() for c in line.split("│")[1:-1]] for line in lines if line.startswith("│")]
    flagged = [f"{c[0]} (PSI {float(c[2]):.1f})" for c in cells if len(c) > 7 and c[-1] == "drift"]
    # the window `loopml monitor` just recorded, read from the store rather than from its printed text
    from loopml.registry import Store

    # (the server's and the worker's own checks record windows too: the newest one over the replayed rows is ours)
    windows = [w for w in Store(url, str(artifacts)).list_drift_windows(NAME, limit=10) if w["rows"] == REPLAY]
    live_accuracy = (windows[0]["results"].get("live") or {}).get("accuracy") if windows else None
    step(f"loopml monitor: {header}" + (f", drifted: {', '.join(flagged)}" if flagged else "")
         + (f"; v1 right on {live_accuracy:.0%} of the queued rows (the queue picks hard ones)" if live_accuracy else "")
         + f"; report {show(out / 'drift.html')}")


def wait_for_promotion(store, client) -> tuple[int, dict]:
    """The first decision with a candidate, then the version the server answers with once it swapped."""
    deadline = time.time() + WAIT_S
    decision = None
    while time.time() < deadline:
        decided = [d for d in store.list_gate_decisions(NAME) if d.get("candidate_version") is not None]
        if decided:
            decision = decided[0]
            break
        time.sleep(1)
    if decision is None:
        raise DemoFailed(f"the loop worker made no decision within {WAIT_S:.0f} s")
    version = client.get("/v1/models").json()[0]["version"]
    while decision["promoted"] and version != decision["candidate_version"] and time.time() < deadline:
        time.sleep(0.2)
        version = client.get("/v1/models").json()[0]["version"]
    return version, decision


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, metavar="DIR",
                        help=f"the folder holding adult/ (default ${DATASETS_ENV}, else ../shared/datasets next to the repo)")
    parser.add_argument("--out", type=Path, default=ROOT / "demo-output" / "loop",
                        help=f"where everything lands; must be new, empty, or made by the demo before ({MARKER})")
    parser.add_argument("--keep-serving", action="store_true", help="keep the server up at the end (Ctrl-C stops it)")
    args = parser.parse_args()
    # a SIGTERM (a CI timeout, `kill`) unwinds like Ctrl-C, so the finally blocks stop the server and worker
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        demo(args.data, args.out, args.keep_serving)
    except DemoFailed as e:
        step(f"DEMO FAILED: {e}")
        return 1
    except CannotRun as e:
        step(f"cannot run the demo: {e}")
        return 2
    except KeyboardInterrupt:
        step("interrupted: server and loop worker stopped" if RUNNING["server"]
             else "interrupted before the server started: nothing was running")
        return 130
    step(f"demo done in {time.perf_counter() - STARTED:.0f} s: v1 → shifted traffic → queue labels → drift → "
         "retrain → gate → v2 served")
    step(f"to go on by hand (loopml monitor {NAME}, loopml models list, loopml serve ...), first run:  "
         f"export LOOPML_STORE=sqlite:///{show(args.out / 'registry.db')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
