"""Scoring a trained run against the Bayes limit, simple baselines and every asking strategy."""
