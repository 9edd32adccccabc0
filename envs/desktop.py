"""The local desktop: screenshots of one monitor of an X display (mss), actions through pyautogui.

One step costs one grab and one encode: ``execute`` waits for the screen to settle by grabbing it, and the
frame it ends on becomes the next observation, so ``observe`` right after ``execute`` grabs nothing. A frame
that stays still while settling is encoded in the background during the quiet period, so that ``observe``
usually finds its bytes ready.
"""
from __future__ import annotations

import os
import sys
import time
from types import TracebackType
from typing import TYPE_CHECKING

from actions.types import Action, ActionParseError, Done, Fail
from envs.base import ActionResult, DisplayError, Observation, ScreenGeometry
from envs.capture import Frame, ScreenCapture
from envs.encoding import DEFAULT_FORMAT, FrameEncoder
from envs.settle import ChangeDetector, SettleConfig, SettleReport, wait_until_settled

if TYPE_CHECKING:
    from actions.executor import PyAutoGUIExecutor


class LocalDesktop:
    """``LocalDesktop(display=":1", monitor=1)``: the Environment on a running X display.

    ``display`` defaults to $DISPLAY. ``monitor`` uses mss numbering (1 = first monitor, 0 = all monitors
    as one image). pyautogui and xclip act on $DISPLAY, so acting on another display sets $DISPLAY for
    this process (before pyautogui is first imported; afterwards a different display is refused).
    """

    def __init__(
        self,
        display: str | None = None,
        monitor: int = 1,
        settle: SettleConfig | None = None,
        encoding: str = DEFAULT_FORMAT,
        *,
        reuse_settled_frame_ms: float = 250.0,
    ) -> None:
        self.settle = settle or SettleConfig()
        self._change_detector = ChangeDetector(self.settle)  # learns blinking carets across steps
        self.reuse_settled_frame_ms = reuse_settled_frame_ms
        self._encoder = FrameEncoder(encoding)  # checks the format before touching the display
        self._capture = ScreenCapture(display, monitor)
        self.display = self._capture.display
        try:
            first = self._capture.grab()
        except DisplayError:
            self._capture.close()
            raise
        monitor_geometry = self._capture.monitor
        # mss grabs physical pixels; monitors are given in input (logical) pixels: the ratio is the scale.
        scale = first.width / monitor_geometry.width if monitor_geometry.width else 1.0
        self._geometry = ScreenGeometry(
            monitor=monitor_geometry.model_copy(update={"scale": scale}),
            screen_width=self._capture.screen.width,
            screen_height=self._capture.screen.height,
            monitors=self._capture.monitors[1:],
        )
        self._executor: PyAutoGUIExecutor | None = None
        self._settled: tuple[Frame, float, SettleReport] | None = None

    @property
    def geometry(self) -> ScreenGeometry:
        return self._geometry

    def observe(self) -> Observation:
        timings: dict[str, float] = {}
        reused = self._take_settled_frame()
        if reused is not None:
            frame, report = reused
            timings["grab"] = 0.0
            timings["settle"] = round(report.waited_ms, 2)
        else:
            start = time.perf_counter()
            frame = self._capture.grab()
            timings["grab"] = _ms_since(start)
        start = time.perf_counter()
        data, _ = self._encoder.encode(frame)
        timings["encode"] = _ms_since(start)
        return Observation(
            image=data,
            mime=self._encoder.mime,
            width=frame.width,
            height=frame.height,
            geometry=self._geometry,
            cursor=self._capture.cursor(),
            timings_ms=timings,
        )

    def execute(self, action: Action) -> ActionResult:
        """Perform ``action`` (screen pixels), then wait until the screen settles (``settle_ms``)."""
        executor = self._get_executor()
        from actions.executor import ExecutionError, FailSafeTriggered

        self._settled = None
        adaptive = self.settle.mode == "adaptive"
        before = self._capture.grab() if adaptive else None
        start = time.perf_counter()
        error: str | None = None
        try:
            executor.execute(action)
        except FailSafeTriggered:
            raise  # the person at the desk wants the run to end: not an action failure for the model to retry
        except (ExecutionError, ActionParseError) as exc:
            error = str(exc)
        duration_ms = _ms_since(start)
        if isinstance(action, (Done, Fail)):
            return ActionResult(ok=error is None, error=error, duration_ms=duration_ms)
        report = wait_until_settled(self._capture.grab, self.settle, before=before,
                                    detector=self._change_detector, on_still=self._encoder.prefetch)
        self._settled = (report.frame, time.monotonic(), report)
        return ActionResult(ok=error is None, error=error, duration_ms=duration_ms,
                            settle_ms=round(report.waited_ms, 2), settled=report.settled)

    def focused_window(self) -> tuple[int, str] | None:
        """(id, WM_CLASS) of the window with the keyboard focus, or None (the safety policy asks per step)."""
        from envs.windows import focused_window

        return focused_window(self.display)

    def close(self) -> None:
        self._settled = None
        if self._executor is not None:
            self._executor.close()
        self._encoder.close()
        self._capture.close()

    def __enter__(self) -> "LocalDesktop":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _take_settled_frame(self) -> tuple[Frame, SettleReport] | None:
        settled, self._settled = self._settled, None
        if settled is None:
            return None
        frame, taken_at, report = settled
        if (time.monotonic() - taken_at) * 1000 > self.reuse_settled_frame_ms:
            return None  # something else ran in between (a debugger pause, a slow recorder): grab anew
        return frame, report

    def _get_executor(self) -> "PyAutoGUIExecutor":
        if self._executor is None:
            _point_pyautogui_at(self.display)
            from actions.executor import PyAutoGUIExecutor

            self._executor = PyAutoGUIExecutor()
        return self._executor


def _point_pyautogui_at(display: str) -> None:
    """pyautogui (and xclip) use $DISPLAY, read once when pyautogui is imported."""
    if os.environ.get("DISPLAY") == display:
        return
    if "pyautogui" in sys.modules:
        raise DisplayError(
            f"pyautogui already acts on DISPLAY={os.environ.get('DISPLAY')!r} in this process, so it cannot act "
            f"on {display!r}; run one desktop per process or set DISPLAY={display} before starting"
        )
    os.environ["DISPLAY"] = display


def _ms_since(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 2)
