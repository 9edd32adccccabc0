# Sourced by install.sh and test.sh (from the project root): picks the Python kimi-cua lives in and sets PY.
# An active virtual environment wins; else the project's .venv; else the system python3, unless that Python is
# externally managed (PEP 668, Debian's and Ubuntu's own), in which case .venv is made for it.
if [ -n "${VIRTUAL_ENV:-}" ]; then
  PY="$VIRTUAL_ENV/bin/python"
elif [ -x .venv/bin/python ]; then
  PY="$PWD/.venv/bin/python"
else
  BASE_PY=$(command -v python3 || command -v python || true)
  if [ -z "$BASE_PY" ]; then
    echo "kimi-cua: no python3 found: install Python >= 3.10 (apt-get install -y python3 python3-venv)" >&2
    exit 2
  fi
  # The interpreter itself, not a pyenv shim: a shim runs `pyenv rehash` after every `-m pip`, which waits 60 s
  # and fails when another process (or a stale lock file) holds ~/.pyenv/shims/.pyenv-shim.
  BASE_PY=$("$BASE_PY" -c 'import sys; print(sys.executable)')
  if "$BASE_PY" -c 'import os, sys, sysconfig; sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")) else 1)'; then
    echo "kimi-cua: $BASE_PY is managed by the system (PEP 668): making a virtual environment in .venv" >&2
    "$BASE_PY" -m venv .venv || { echo "kimi-cua: could not make .venv: apt-get install -y python3-venv, then retry" >&2; exit 2; }
    PY="$PWD/.venv/bin/python"
  else
    PY="$BASE_PY"
  fi
fi
export PY
