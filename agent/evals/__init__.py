"""Evaluations: ScreenSpot-family grounding (datasets, runner, metrics), OSWorld (runner, our agent for OSWorld's
harness) and OSWorld-format tasks on local desktops."""
