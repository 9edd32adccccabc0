"""Rules on actions (policy) and ways to stop a run (kill switch, stop file, stuck detector)."""
