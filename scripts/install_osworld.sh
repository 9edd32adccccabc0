#!/usr/bin/env bash
# Installs OSWorld's own code - PyPI `desktop-env` (DesktopEnv.step, PythonController, SetupController, every metric
# and getter) - in its own virtual environment, <project>/.venv-osworld, for `kimi-cua eval local` (setup and scoring
# run there, in a worker process) and for the tests that drive our guest with OSWorld's controllers.
#   - idempotent: does nothing when .venv-osworld already imports desktop_env's metrics, getters and DesktopEnv;
#   - KIMI_CUA_NO_OSWORLD=1 skips it (eval local then says how to install it; those tests skip);
#   - desktop-env pins old heavy packages (torch~=2.5, transformers~=4.35, numpy<2, Pillow~=11.0) and ~70 cloud/LLM
#     SDKs its evaluators never import: it is installed with --no-deps, plus only what desktop_env.desktop_env,
#     desktop_env.controllers.* and desktop_env.evaluators.{metrics,getters} import, at desktop-env's own pins;
#   - easyocr (imported by the docs metrics, used only by compare_image_text) needs torchvision, and PyPI's
#     torchvision is a CUDA build that fails next to a CPU torch ("operator torchvision::nms does not exist"); it also
#     downloads its OCR weights from the internet on first use. So the venv gets a stub `easyocr` whose Reader raises
#     (compare_image_text is reported unsupported). KIMI_CUA_OSWORLD_EASYOCR=1 installs the real easyocr with
#     torch==2.13.0 instead (needs a torchvision that matches your torch, e.g. from PyTorch's CPU index).
set -euo pipefail
cd "$(dirname "$0")/.."
DESKTOP_ENV_VERSION="${KIMI_CUA_DESKTOP_ENV_VERSION:-1.0.2}"
VENV="${KIMI_CUA_OSWORLD_VENV:-$PWD/.venv-osworld}"
PY="$VENV/bin/python"

if [ "${KIMI_CUA_NO_OSWORLD:-0}" = "1" ]; then
  echo "install_osworld.sh: KIMI_CUA_NO_OSWORLD=1: skipping desktop-env (eval local and the OSWorld-code tests skip)"
  exit 0
fi

start=$(date +%s)
check() {
  [ -x "$PY" ] && "$PY" - "$DESKTOP_ENV_VERSION" <<'PYEOF' >/dev/null 2>&1
import sys
import importlib.metadata as md
import desktop_env.evaluators.metrics, desktop_env.evaluators.getters  # noqa: F401
from desktop_env.desktop_env import DesktopEnv, _fix_pyautogui_less_than_bug  # noqa: F401
from desktop_env.controllers.setup import SetupController  # noqa: F401
assert md.version("desktop-env") == sys.argv[1], md.version("desktop-env")
PYEOF
}

if check; then
  echo "install_osworld.sh: desktop-env $DESKTOP_ENV_VERSION already in $VENV ($(( $(date +%s) - start )) s)"
  exit 0
fi

[ -x "$PY" ] || python3 -m venv "$VENV"
"$PY" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
CONSTRAINTS="$(mktemp)"
trap 'rm -f "$CONSTRAINTS"' EXIT
# desktop-env 1.0.2's own pins for what is installed here (opencv < 4.11: the last builds for numpy 1).
cat > "$CONSTRAINTS" <<'PINS'
numpy>=1.26,<2
Pillow~=11.0.0
pandas>=2.2,<2.3
gymnasium~=0.28.1
pytz~=2024.1
opencv-python-headless>=4.5,<4.11
torch==2.13.0
PINS
pip_q() {  # pip, without the warnings this machine's pip.conf prints for every missing local index
  "$PY" -m pip "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}
pip_q install -q --no-deps "desktop-env==$DESKTOP_ENV_VERSION"
# What desktop_env's controllers, DesktopEnv and evaluators import (read from the wheel's import statements).
pip_q install -q -c "$CONSTRAINTS" \
  requests requests-toolbelt python-dotenv gymnasium playwright pydrive numpy Pillow pandas openpyxl python-docx \
  python-pptx odfpy rapidfuzz lxml cssselect xmltodict tldextract formulas pypdf PyPDF2 pymupdf pdfplumber borb \
  beautifulsoup4 opencv-python-headless imagehash librosa fastdtw scipy scikit-image mutagen pyacoustid pyyaml \
  pytz chardet
SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
if [ "${KIMI_CUA_OSWORLD_EASYOCR:-0}" = "1" ]; then
  pip_q install -q -c "$CONSTRAINTS" torch==2.13.0 easyocr
else
  mkdir -p "$SITE/easyocr"
  cat > "$SITE/easyocr/__init__.py" <<'STUB'
"""kimi-cua's stand-in for easyocr (scripts/install_osworld.sh): importable, so desktop_env's metrics import;
Reader raises. The real easyocr needs a torchvision matching a CPU torch and downloads OCR weights at first use."""
__kimi_cua_stub__ = True


class Reader:
    def __init__(self, *args, **kwargs):
        raise RuntimeError("easyocr is not installed in this venv (kimi-cua stub): OCR metrics such as "
                           "compare_image_text cannot run; rerun scripts/install_osworld.sh with "
                           "KIMI_CUA_OSWORLD_EASYOCR=1 and a matching CPU torchvision")
STUB
fi

if ! check; then
  echo "install_osworld.sh: desktop-env $DESKTOP_ENV_VERSION does not import in $VENV; the error:" >&2
  "$PY" -c 'import desktop_env.evaluators.metrics, desktop_env.evaluators.getters; import desktop_env.desktop_env' >&2 || true
  exit 1
fi
echo "install_osworld.sh: desktop-env $DESKTOP_ENV_VERSION installed in $VENV in $(( $(date +%s) - start )) s" \
  "($(du -sh "$VENV" 2>/dev/null | cut -f1))"
