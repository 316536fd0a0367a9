"""Offline evaluation: ranking, diversity and prediction-file utilities."""
