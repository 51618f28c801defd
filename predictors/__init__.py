"""Latency / energy / accuracy predictors (predictor issue). Nothing here yet."""
