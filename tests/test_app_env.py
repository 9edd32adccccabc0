"""envs/app_env.py: programs launched on a desktop do not inherit opencv's bundled-Qt variables (VLC exited at start
with them: "Could not load the Qt platform plugin "xcb" ... even though it was found")."""
from __future__ import annotations

import os
import subprocess
import sys

from envs.app_env import app_env

SITE = "/venv/lib/python3.11/site-packages"


def test_opencv_variables_are_dropped_and_everything_else_kept():
    base = {"QT_QPA_PLATFORM_PLUGIN_PATH": f"{SITE}/cv2/qt/plugins", "QT_QPA_FONTDIR": f"{SITE}/cv2/qt/fonts",
            "LD_LIBRARY_PATH": f"{SITE}/cv2/../../lib64:/opt/mine/lib", "PATH": "/usr/bin", "HOME": "/root"}
    env = app_env(base, DISPLAY=":5")
    assert env == {"LD_LIBRARY_PATH": "/opt/mine/lib", "PATH": "/usr/bin", "HOME": "/root", "DISPLAY": ":5"}


def test_the_users_own_qt_settings_are_kept():
    base = {"QT_QPA_PLATFORM_PLUGIN_PATH": "/usr/lib/x86_64-linux-gnu/qt5/plugins", "QT_QPA_FONTDIR": "/opt/fonts",
            "LD_LIBRARY_PATH": f"{SITE}/cv2/../../lib64"}
    assert app_env(base) == {"QT_QPA_PLATFORM_PLUGIN_PATH": "/usr/lib/x86_64-linux-gnu/qt5/plugins",
                             "QT_QPA_FONTDIR": "/opt/fonts"}


def test_a_process_that_imported_opencv_launches_with_a_clean_environment():
    code = ("import cv2, os, json; from envs.app_env import app_env; "
            "print(json.dumps([os.environ.get('QT_QPA_PLATFORM_PLUGIN_PATH'), "
            "app_env().get('QT_QPA_PLATFORM_PLUGIN_PATH'), app_env().get('LD_LIBRARY_PATH', '')]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True,
                          env={**os.environ, "LD_LIBRARY_PATH": ""})
    import json

    poisoned, cleaned, libraries = json.loads(done.stdout)
    assert poisoned and "cv2" in poisoned  # what opencv-python does on import (the condition this module undoes)
    assert cleaned is None and "cv2" not in libraries
