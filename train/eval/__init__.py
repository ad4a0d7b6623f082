"""Evaluation: `voicegate eval` (door attempts, FAR/FRR/UNCERTAIN), metrics, calibration, open set."""
