"""Tools that judge the metric and the gate: the memorization benchmark, threshold
calibration, champion/challenger retraining evaluation.
"""
