"""loopml serve vs `mlflow models serve` on the same models, same machine, same run, same load
generator (bench/loadgen.py), one record per request, 1 worker each (bench/results/serve_peers.json).

MLflow runs in its own virtualenv (never ours): create it with

    python3 -m venv /tmp/peer-mlflow && /tmp/peer-mlflow/bin/pip install mlflow -e .
    python -m bench.serve_peers --mlflow-python /tmp/peer-mlflow/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


import loopml  # noqa: E402
from bench import realdata  # noqa: E402
from bench.common import write_result  # noqa: E402
from bench.serve import CONCURRENCY, _port, load, start_server, wait_ready  # noqa: E402
from loopml.registry import Store  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def mlflow_server(python: str, model_dir: Path, tmp: Path) -> tuple[subprocess.Popen, str]:
    packaged = tmp / f"mlflow-{model_dir.name}"
    code = ("import mlflow.pyfunc, sys; mlflow.pyfunc.save_model(path=sys.argv[1], loader_module='mlflow_loopml', "
            "data_path=sys.argv[2], code_paths=[sys.argv[3]])")
    subprocess.run([python, "-c", code, str(packaged), str(model_dir), str(ROOT / "bench/peers/mlflow_loopml.py")],
                   check=True, capture_output=True)
    port = _port()
    mlflow = str(Path(python).with_name("mlflow"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",  # mlflow starts the venv's uvicorn by name
           "PATH": f"{Path(python).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.Popen([mlflow, "models", "serve", "-m", str(packaged), "--env-manager", "local", "-p", str(port),
                             "-h", "127.0.0.1", "-w", "1"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return proc, wait_ready(proc, f"http://127.0.0.1:{port}", "/ping", seconds=180.0)


def case(name: str, df, target: str, extra: dict, python: str, seconds: float, tmp: Path) -> dict:
    model = loopml.Model({"target": target, **extra}).fit(df, progress=False)
    model_dir = model.save(tmp / name)
    store_url = f"sqlite:///{tmp / f'{name}.db'}"
    store = Store(store_url, str(tmp / "artifacts"))
    store.register(name, path=model_dir)
    store.promote(name, 1)
    record = {k: (v.item() if hasattr(v, "item") else v) for k, v in df.drop(columns=[target]).iloc[0].items()}
    ours_body, theirs_body = tmp / f"{name}-ours.json", tmp / f"{name}-mlflow.json"
    ours_body.write_text(json.dumps(record))
    theirs_body.write_text(json.dumps({"dataframe_records": [record]}))
    result = {}
    for server, (proc, url), path, body in (
        ("loopml", start_server(f"{name}@production", store_url), f"/v1/models/{name}/predict", ours_body),
        ("mlflow", mlflow_server(python, model_dir, tmp), "/invocations", theirs_body),
    ):
        try:
            result[server] = {}
            for c in CONCURRENCY:
                p = load(url, path, body, c, seconds)
                result[server][c] = p
                print(f"{name} {server} c={c}: {p['rps']:.0f} req/s, p50 {p['p50_ms']:.1f} ms, p99 {p['p99_ms']:.1f} ms, "
                      f"errors {p['errors']}", flush=True)
        finally:
            proc.terminate()
            proc.wait(60)
    result["ratio_c64"] = result["loopml"][64]["rps"] / max(result["mlflow"][64]["rps"], 1e-9)
    print(f"{name}: loopml / mlflow at c=64 = {result['ratio_c64']:.2f}×", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mlflow-python", default="/tmp/peer-mlflow/bin/python")
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    if not Path(args.mlflow_python).exists():
        sys.exit(f"no MLflow virtualenv at {args.mlflow_python} (see this script's docstring)")
    version = subprocess.run([args.mlflow_python, "-c", "import mlflow; print(mlflow.__version__)"], capture_output=True,
                             text=True, check=True).stdout.strip()
    results = {"mlflow_version": version}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        results["text_sms_spam"] = case("sms", realdata.sms_spam(), "label", {"split": {"duplicates": "drop"}},
                                        args.mlflow_python, args.seconds, tmp)
        train, _ = realdata.adult()
        results["tabular_adult"] = case("adult", train, "income", {}, args.mlflow_python, args.seconds, tmp)
    print(f"written {write_result('serve_peers', results)}")


if __name__ == "__main__":
    main()
