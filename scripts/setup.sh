#!/usr/bin/env bash
# One-time set-up of a fresh machine: a virtual environment in .venv with torch and stresnet.
# Idempotent: a second run only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# torch/torchvision pinned to the builds this project is tested with (on this workplace's
# x86-64 Python 3.11 machines pip takes them from local disk); override with TORCH_SPEC.
TORCH_SPEC=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}
.venv/bin/python -m pip install -q --disable-pip-version-check $TORCH_SPEC
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test,export,plot,detect]"
