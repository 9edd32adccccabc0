"""The built-in CPU baseline grounder: OCR + fuzzy text matching behind vLLM's HTTP protocol."""
from agent.models.baseline.grounding import Match, Target, extract_target, find_text, ground
from agent.models.baseline.ocr import OcrEngine, OcrUnavailable, RapidOcrEngine, TextBox
from agent.models.baseline.server import BASELINE_MODEL, BaselineGrounder, BaselineServer

__all__ = ["BASELINE_MODEL", "BaselineGrounder", "BaselineServer", "Match", "OcrEngine", "OcrUnavailable",
           "RapidOcrEngine", "Target", "TextBox", "extract_target", "find_text", "ground"]
