"""The environment programs launched on a desktop get: ours, minus what libraries loaded in this process set for
themselves.

opencv-python (imported by rapidocr, the baseline grounder) sets ``QT_QPA_PLATFORM_PLUGIN_PATH`` and
``QT_QPA_FONTDIR`` to its own bundled Qt and puts its library folder first in ``LD_LIBRARY_PATH`` when it is imported.
A Qt program started from such a process (VLC, for one) then loads opencv's Qt plugins, fails ("Could not load the Qt
platform plugin "xcb" ... even though it was found") and exits before opening a window.
"""
from __future__ import annotations

import os
from collections.abc import Mapping

_QT_VARIABLES = ("QT_QPA_PLATFORM_PLUGIN_PATH", "QT_QPA_FONTDIR", "QT_PLUGIN_PATH")


def _bundled(path: str) -> bool:
    """A folder inside a Python package's bundled copy of Qt or its libraries (opencv-python's ``cv2/...``)."""
    parts = path.split(os.sep)  # as written: opencv adds "<site-packages>/cv2/../../lib64"
    return "cv2" in parts or "opencv_python.libs" in parts or "opencv_python_headless.libs" in parts


def app_env(base: Mapping[str, str] | None = None, **overrides: str) -> dict[str, str]:
    """A copy of ``base`` (default: this process's environment) fit for launching desktop programs, with
    ``overrides`` applied last."""
    env = dict(os.environ if base is None else base)
    for name in _QT_VARIABLES:
        if name in env and _bundled(env[name]):
            del env[name]
    if "LD_LIBRARY_PATH" in env:
        kept = [p for p in env["LD_LIBRARY_PATH"].split(os.pathsep) if p and not _bundled(p)]
        if kept:
            env["LD_LIBRARY_PATH"] = os.pathsep.join(kept)
        else:
            del env["LD_LIBRARY_PATH"]
    env.update(overrides)
    return env
