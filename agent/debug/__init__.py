"""Looking at and re-running runs: step-through, reports, replay, screenshot annotation."""
