#!/usr/bin/env bash
# Installs kimi-cua to run an agent: the Debian packages for a virtual X desktop and input, then the package (light:
# no torch, no vLLM). The test path (scripts/test.sh) adds what only the tests need.
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
    xvfb xauth xdotool xclip openbox x11-utils x11-xserver-utils wmctrl fonts-dejavu-core python3-tk python3-venv \
    bubblewrap dbus-daemon libglib2.0-bin >/dev/null
  # bubblewrap: --sandbox; dbus-daemon: dbus-run-session gives each eval-local task its own session bus;
  # libglib2.0-bin: gsettings.
  if [ "$OSWORLD_APPS" = "1" ]; then
    . scripts/_osworld_apps.sh
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $OSWORLD_APP_PACKAGES >/dev/null
    # OSWorld's tasks start `google-chrome`; Debian packages chromium. As root it needs --no-sandbox.
    $SUDO tee /usr/local/bin/google-chrome >/dev/null <<'CHROME'
#!/bin/sh
# kimi-cua (scripts/install.sh --osworld-apps): OSWorld's tasks call google-chrome; this machine has chromium.
if [ "$(id -u)" = "0" ]; then exec chromium --no-sandbox "$@"; fi
exec chromium "$@"
CHROME
    $SUDO chmod 755 /usr/local/bin/google-chrome
    # VLC refuses to start as root ("VLC is not supposed to be run as root"), which is how containers and CI run
    # eval local. As root, `vlc` runs a copy of Debian's 14 kB launcher with that check patched out (libvlc is
    # Debian's, untouched); as anyone else, Debian's own /usr/bin/vlc.
    $SUDO mkdir -p /usr/local/lib/kimi-cua
    sed 's/geteuid/getppid/' /usr/bin/vlc | $SUDO tee /usr/local/lib/kimi-cua/vlc-as-root >/dev/null
    $SUDO chmod 755 /usr/local/lib/kimi-cua/vlc-as-root
    $SUDO tee /usr/local/bin/vlc >/dev/null <<'VLC'
#!/bin/sh
# kimi-cua (scripts/install.sh --osworld-apps): Debian's vlc exits when run as root; OSWorld's tasks start `vlc`.
if [ "$(id -u)" = "0" ]; then exec /usr/local/lib/kimi-cua/vlc-as-root "$@"; fi
exec /usr/bin/vlc "$@"
VLC
    $SUDO chmod 755 /usr/local/bin/vlc
  fi
else
  echo "install.sh: no apt-get; install Xvfb, openbox, xdotool, xclip and Tk with your package manager" >&2
fi
. scripts/_python.sh
"$PY" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
# python-xlib goes in the same command as pyautogui (REFERENCE.md section 5).
"$PY" -m pip install -q -e .
# The project's own bytecode, once: an editable install is never compiled by pip, and where PYTHONDONTWRITEBYTECODE is
# set every `kimi-cua` command compiled its ~60 modules again at start (0.4 s of its 1.4 s).
"$PY" -m compileall -q -j 0 agent actions envs prompts >/dev/null || true
echo "install.sh: kimi-cua installed in $PY ($("$PY" -c 'import sys; print(sys.version.split()[0])'))"
case "$PY" in
  "$PWD"/.venv/*) echo "install.sh: activate it with: source .venv/bin/activate" ;;
  *) command -v kimi-cua >/dev/null || echo "install.sh: kimi-cua is in $(dirname "$PY"); add that folder to PATH (pyenv: run \`pyenv rehash\`), or use \`$PY -m agent\`" ;;
esac
