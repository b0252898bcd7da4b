"""lsde-bench: sweep samplers x NFE (or tolerance) x seeds, score them, keep one row per (cell, metric).

spec.py expands and validates a sweep, results.py is the append-only JSONL store (the record), runner.py samples and
scores the cells, report.py draws the views (PNG, markdown, CSV, W&B) from the results file alone.
"""
