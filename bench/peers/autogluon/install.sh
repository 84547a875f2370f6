#!/usr/bin/env bash
# Build AutoGluon's own virtualenv for bench/automl.py:
#     bash bench/peers/autogluon/install.sh [VENV_DIR]      (default /work/venvs/autogluon)
# then: python -m bench.automl --autogluon-python VENV_DIR/bin/python
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${1:-/work/venvs/autogluon}"
python3 -m venv "$venv"
"$venv/bin/pip" install -q -U pip
"$venv/bin/pip" install -r "$here/requirements.txt"
if "$venv/bin/pip" list 2>/dev/null | grep -qi '^nvidia-'; then
  echo "warning: CUDA wheels were pulled into $venv" >&2
fi
"$venv/bin/python" -c "import autogluon.tabular, torch; print('autogluon', autogluon.tabular.__version__, 'torch', torch.__version__)"
