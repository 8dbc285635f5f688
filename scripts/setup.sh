#!/usr/bin/env bash
# Set up distrec in ./.venv: pinned CPU torch, fbgemm, torchrec (without its CUDA fbgemm
# requirement), distrec itself (editable), the search tools (optuna), the kubernetes client
# (torchx's Kubernetes scheduler, dry runs included) and the test tools. Safe to run again.
#
#   bash scripts/setup.sh                 # CPU (gloo)
#   DISTREC_GPU=1 bash scripts/setup.sh   # CUDA build of fbgemm (nccl); see docs/gpu.md
#
# TORCH_INDEX_URL: a pip index holding the torch==2.13.0 wheel you want (e.g. PyTorch's CPU
# wheel index) on machines where plain PyPI would hand you a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }
pip install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch==2.13.0"
if [ "${DISTREC_GPU:-0}" = 1 ]; then extra=gpu; else extra=cpu; fi
pip install -e ".[$extra,dev,search,kubernetes]"
pip install --no-deps "torchrec==1.8.0"
.venv/bin/python -c "import torchrec, fbgemm_gpu, distrec; print('distrec ready: torch', __import__('torch').__version__, '| torchrec', torchrec.__version__ if hasattr(torchrec, '__version__') else '1.8.0')"
