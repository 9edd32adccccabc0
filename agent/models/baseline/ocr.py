"""On-screen text detection with RapidOCR, whose ONNX weights ship inside its PyPI wheel (no download)."""
from __future__ import annotations

import io
from typing import Protocol

from pydantic import BaseModel, ConfigDict

INSTALL_HINT = "install the OCR engine with: pip install 'kimi-cua[baseline]' (rapidocr-onnxruntime)"


class TextBox(BaseModel):
    """One line of text the OCR engine found, with its axis-aligned box in image pixels."""

    model_config = ConfigDict(frozen=True)
    text: str
    x0: float
    y0: float
    x1: float
    y1: float
    score: float = 1.0


class OcrUnavailable(RuntimeError):
    """The OCR engine cannot be imported or loaded; the message says how to install it."""


class OcrEngine(Protocol):
    def read(self, image_bytes: bytes) -> tuple[int, int, list[TextBox]]:
        """Return (width, height, text boxes) of an encoded image."""
        ...


class RapidOcrEngine:
    """Lazily loads RapidOCR (PP-OCRv4 mobile detection + recognition models, ONNX Runtime on the CPU)."""

    def __init__(self, min_score: float = 0.5) -> None:
        self.min_score = min_score
        self._engine: object | None = None

    def _load(self) -> object:
        if self._engine is None:
            try:
                from rapidocr_onnxruntime import RapidOCR
            except ImportError as exc:
                raise OcrUnavailable(f"the baseline grounder needs RapidOCR ({exc}); {INSTALL_HINT}") from None
            self._engine = RapidOCR()
        return self._engine

    def read(self, image_bytes: bytes) -> tuple[int, int, list[TextBox]]:
        import numpy as np
        from PIL import Image, UnidentifiedImageError

        try:
            image = Image.open(io.BytesIO(image_bytes)).convert("RGB")
        except (UnidentifiedImageError, OSError) as exc:
            raise ValueError(f"the image in the request cannot be decoded: {exc}") from None
        engine = self._load()
        result, _elapsed = engine(np.asarray(image))  # type: ignore[operator]
        boxes: list[TextBox] = []
        for quad, text, score in result or []:
            if float(score) < self.min_score or not str(text).strip():
                continue
            xs = [float(p[0]) for p in quad]
            ys = [float(p[1]) for p in quad]
            boxes.append(TextBox(text=str(text), x0=min(xs), y0=min(ys), x1=max(xs), y1=max(ys), score=float(score)))
        return image.width, image.height, boxes
