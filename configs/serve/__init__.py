"""Serving configs: an experiment config plus a `serve` section (bes/serving/config.py)."""
