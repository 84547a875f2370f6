"""Page times of the dashboard on a big store (bench/results/ui.json, ui.md) and screenshots of every page.

A store is seeded by ``bench.ui_seed`` (10k runs, 1k versions, 1M predictions by default; the SQLite
one is kept under /tmp/loopml_ui_bench and reused while its sizes match, the PostgreSQL one is a fresh
database dropped after), then a real ``loopml ui`` process serves it on loopback and each page is
requested ``--repeats`` times over one keep-alive connection, after one untimed warm-up request per
page (reported as ``first_ms``: a fresh server's first answer; the feedback page answers "ranking…" while a
fresh server loads the model and ranks the queue in the background: ``ranked_after_ms``). ``startup_s``: from
starting the process to its first answer (the server warms imports, templates, matplotlib before it listens).
The figure is the wall time of the whole response at the client; the goal is p95 ≤ 200 ms per page.

    python -m bench.ui                       # both stores, full size
    python -m bench.ui --quick               # a small SQLite store, 5 repeats: a smoke test
    python -m bench.ui --stores sqlite --repeats 30
    python -m bench.ui --screenshots         # bench/results/ui/*.png (Playwright + Debian chromium)
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import RESULTS, write_result  # noqa: E402
from bench.ui_seed import postgres_database, seed  # noqa: E402

GOAL_MS = 200.0
#: port → seconds from starting a ``loopml ui`` process to its first answer
STARTUP_S: dict[int, float] = {}
CACHE = Path(tempfile.gettempdir()) / "loopml_ui_bench"
FULL = {"runs": 10_000, "versions": 1_000, "predictions": 1_000_000}
QUICK = {"runs": 200, "versions": 20, "predictions": 5_000}
TOKEN = "bench-token"
LOAD_LAZY_IMAGES = """() => Promise.all(Array.from(document.images).map(i => {
  i.loading = "eager";
  return i.complete && i.naturalWidth ? 0 : new Promise(done => { i.onload = i.onerror = done; });
}))"""
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def ui_server(store: str, artifacts: str | None = None, token: str | None = TOKEN, timeout: float = 90.0,
              log: Path | None = None) -> Iterator[str]:
    """A ``loopml ui`` process on a free loopback port for the block; its base URL once it answers."""
    port = free_port()
    command = [sys.executable, "-m", "loopml", "ui", "--store", store, "--port", str(port)]
    command += ["--artifacts", artifacts] if artifacts else []
    command += ["--admin-token", token] if token else []
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115  closed below
    began = time.monotonic()
    process = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                detail = log.read_text(errors="replace")[-2000:] if log else ""
                raise RuntimeError(f"loopml ui exited with {process.returncode} before answering"
                                   + (f": {detail}" if detail else ""))
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                connection.request("GET", "/login")
                connection.getresponse().read()
                connection.close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"loopml ui did not answer on port {port} within {timeout:.0f} s") from None
                time.sleep(0.1)
        STARTUP_S[port] = round(time.monotonic() - began, 2)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if log:
            out.close()


def seeded_sqlite(size: dict, reuse: bool = True) -> dict:
    """The SQLite store of this size under /tmp (seeded once, then reused); its seeding facts."""
    root = CACHE / ("sqlite-" + "-".join(str(size[k]) for k in ("runs", "versions", "predictions")))
    facts_file = root / "facts.json"
    if reuse and facts_file.is_file():
        facts = json.loads(facts_file.read_text())
        facts["reused"] = True
        return facts
    shutil.rmtree(root, ignore_errors=True)
    facts = seed(f"sqlite:///{root / 'registry.db'}", str(root / "artifacts"), **size)
    facts.update(url=f"sqlite:///{root / 'registry.db'}", artifacts=str(root / "artifacts"), reused=False)
    facts_file.write_text(json.dumps(facts, indent=1))
    return facts


def pages(facts: dict) -> list[tuple[str, str]]:
    """(name, path) of every page timed; ids and names from the seeded store."""
    runs = facts["runs"]
    late = max(1, int(0.75 * (facts["run_count"] // 50)))
    model, big = facts["model"], facts.get("big_model") or facts["model"]
    return [
        ("overview", "/"),
        ("runs", "/runs"),
        ("runs sorted by metric", "/runs?sort=metric:test.accuracy"),
        ("runs filtered", "/runs?experiment=churn&status=finished"),
        (f"runs page {late}", f"/runs?page={late}"),
        ("run detail", f"/runs/{runs[0]}"),
        ("run detail: a learning-curve PNG", f"/runs/{runs[0]}/curve.png?key=val_loss"),
        ("compare 2 runs", f"/runs/compare?ids={runs[0]},{runs[1]}"),
        ("compare 4 runs", f"/runs/compare?ids={','.join(runs[:4])}"),
        ("compare: a learning-curve PNG", f"/runs/compare/curve.png?ids={runs[0]},{runs[1]}&key=val_loss"),
        ("models", "/models"),
        (f"model {model}", f"/models/{model}"),
        (f"model {big} ({facts.get('big_model_versions') or facts['versions'] // 2} versions)", f"/models/{big}"),
        ("monitor", f"/monitor?model={model}"),
        ("feedback (after a first request)", f"/feedback?model={model}"),
        ("decisions", "/decisions"),
    ]


def time_pages(base: str, facts: dict, repeats: int) -> list[dict]:
    host, port = base.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=120)

    def get(path: str) -> tuple[float, int, int, bool]:
        start = time.perf_counter()
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
        return (time.perf_counter() - start) * 1000, response.status, len(body), b'id="queue-ranking"' in body

    out = []
    for name, path in pages(facts):
        started = time.perf_counter()
        first_ms, status, size, ranking = get(path)  # warm-up: not in the figures
        ready_ms = None
        while ranking and time.perf_counter() - started < 120:  # "ranking…": the page reloads itself until ranked
            time.sleep(0.2)
            _, status, size, ranking = get(path)
            ready_ms = round((time.perf_counter() - started) * 1000, 1)
        times = [get(path)[0] for _ in range(repeats)]
        times.sort()
        p95 = times[min(len(times) - 1, max(0, int(round(0.95 * len(times))) - 1))]
        out.append({"page": name, "path": path, "status": status, "bytes": size, "first_ms": round(first_ms, 1),
                    "p50_ms": round(statistics.median(times), 1), "p95_ms": round(p95, 1), "max_ms": round(times[-1], 1),
                    "repeats": repeats, "meets_goal": status == 200 and p95 <= GOAL_MS,
                    **({"ranked_after_ms": ready_ms} if ready_ms is not None else {})})
        print(f"  {name:<40} {status} p50 {out[-1]['p50_ms']:7.1f} ms  p95 {p95:7.1f} ms  first {first_ms:7.1f} ms"
              + (f" (ranked after {ready_ms:.0f} ms)" if ready_ms is not None else ""), flush=True)
    connection.close()
    return out


def bench_store(kind: str, size: dict, repeats: int, reuse: bool) -> dict:
    print(f"{kind}: seeding {size}", flush=True)
    if kind == "sqlite":
        facts = seeded_sqlite(size, reuse=reuse)
        with ui_server(facts["url"], facts["artifacts"]) as base:
            return {"seed": facts, "startup_s": STARTUP_S[int(base.rsplit(":", 1)[1])],
                    "pages": time_pages(base, facts, repeats)}
    with postgres_database() as url, tempfile.TemporaryDirectory() as tmp:
        facts = seed(url, str(Path(tmp) / "artifacts"), **size)
        facts["reused"] = False
        print(f"  seeded in {facts['seconds']['total']} s", flush=True)
        with ui_server(url, str(Path(tmp) / "artifacts")) as base:
            return {"seed": facts, "startup_s": STARTUP_S[int(base.rsplit(":", 1)[1])],
                    "pages": time_pages(base, facts, repeats)}


def markdown(result: dict) -> str:
    size = result["size"]
    lines = [f"# Dashboard page times (bench/ui.py{' --quick' if result['quick'] else ''})", "",
             f"Store: {size['runs']} runs, {size['versions']} versions, {size['predictions']} predictions "
             f"(one real model, `tiny`, holds the predictions). A `loopml ui` process on loopback; each page "
             f"requested {result['repeats']} times over one keep-alive connection after one untimed warm-up "
             "request (`first`: a fresh server's first answer of that page; the feedback page answers \"ranking…\" "
             "at once and reloads itself until the background ranking is done: `ranked after` below). "
             f"Goal: p95 ≤ {GOAL_MS:.0f} ms per page.", ""]
    stores = list(result["stores"])
    lines.append("| page | " + " | ".join(f"{s} p50 | {s} p95 | {s} first" for s in stores) + " | goal |")
    lines.append("|---|" + "---:|---:|---:|" * len(stores) + "---|")
    names = [p["page"] for p in result["stores"][stores[0]]["pages"]]
    for i, name in enumerate(names):
        cells, ok = [], True
        for s in stores:
            p = result["stores"][s]["pages"][i]
            cells.append(f"{p['p50_ms']} | {p['p95_ms']} | {p['first_ms']}" if p["status"] == 200
                         else f"HTTP {p['status']} | — | —")
            ok = ok and p["meets_goal"]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {'✓' if ok else '✗'} |")
    lines.append("")
    for s in stores:
        ranked = [f"{p['page']} ranked after {p['ranked_after_ms']} ms" for p in result["stores"][s]["pages"]
                  if p.get("ranked_after_ms") is not None]
        lines.append(f"- {s}: `loopml ui` answered {result['stores'][s].get('startup_s')} s after it was started"
                     + (f"; {', '.join(ranked)}" if ranked else ""))
    for s in stores:
        seconds = result["stores"][s]["seed"]["seconds"]
        reused = " (reused from an earlier run)" if result["stores"][s]["seed"].get("reused") else ""
        lines.append(f"- {s} seeding{reused}: " + ", ".join(f"{k} {v} s" for k, v in seconds.items()))
    return "\n".join(lines) + "\n"


def screenshots(out: Path = RESULTS / "ui") -> list[Path]:
    """A PNG of every page (1366×850 viewport, full page), logged in as the admin, on a small realistic store."""
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("Debian's chromium is not installed (apt-get install chromium)")
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'registry.db'}"
        facts = seed(url, str(Path(tmp) / "artifacts"), runs=12, versions=12, predictions=3000, drift_windows=24)
        model, runs = facts["model"], facts["runs"]
        shots = [("login", "/login"), ("overview", "/"), ("runs", "/runs"), ("run", f"/runs/{runs[0]}"),
                 ("compare", f"/runs/compare?ids={runs[0]},{runs[1]},{runs[2]}"), ("models", "/models"),
                 ("model", f"/models/{model}"), ("report", f"/models/{model}/1/report"),
                 ("monitor", f"/monitor?model={model}"), ("feedback", f"/feedback?model={model}"),
                 ("decisions", "/decisions")]
        written = []
        with ui_server(url, token=TOKEN) as base, sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=BROWSER_ARGS)
            page = browser.new_page(viewport={"width": 1366, "height": 850})
            page.goto(base + "/login")
            page.screenshot(path=str(out / "login.png"), full_page=True)
            written.append(out / "login.png")
            page.get_by_label("Admin token").fill(TOKEN)
            page.get_by_role("button", name="Log in").click()
            page.wait_for_load_state()
            for name, path in shots[1:]:
                page.goto(base + path)
                page.wait_for_load_state("networkidle")
                page.evaluate(LOAD_LAZY_IMAGES)  # a full-page shot shows what is below the fold: load it first
                page.screenshot(path=str(out / f"{name}.png"), full_page=True)
                written.append(out / f"{name}.png")
                print(f"  {out / f'{name}.png'}", flush=True)
            browser.close()
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small SQLite store, 5 repeats (a smoke test)")
    parser.add_argument("--stores", default=None, help="sqlite,postgresql (default both; --quick: sqlite)")
    parser.add_argument("--repeats", type=int, default=None, help="timed requests per page (default 30; --quick 5)")
    parser.add_argument("--no-reuse", action="store_true", help="seed the SQLite store again even if one is kept")
    parser.add_argument("--screenshots", action="store_true", help="only write bench/results/ui/*.png")
    args = parser.parse_args(argv)
    if args.screenshots:
        screenshots()
        return
    size = QUICK if args.quick else FULL
    repeats = args.repeats or (5 if args.quick else 30)
    stores = (args.stores or ("sqlite" if args.quick else "sqlite,postgresql")).split(",")
    unknown = [s for s in stores if s not in ("sqlite", "postgresql")]
    if unknown:
        parser.error(f"--stores: {unknown[0]!r} is not sqlite or postgresql")
    result = {"quick": args.quick, "size": size, "repeats": repeats, "goal_ms": GOAL_MS,
              "stores": {s: bench_store(s, size, repeats, not args.no_reuse) for s in stores}}
    result["all_meet_goal"] = all(p["meets_goal"] for s in result["stores"].values() for p in s["pages"])
    name = "ui_quick" if args.quick else "ui"
    write_result(name, result)
    (RESULTS / f"{name}.md").write_text(markdown(result))
    print(f"{RESULTS / f'{name}.json'}, {RESULTS / f'{name}.md'}; all pages within {GOAL_MS:.0f} ms: {result['all_meet_goal']}")


if __name__ == "__main__":
    main()
