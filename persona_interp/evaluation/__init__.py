"""Measuring: A/B scoring and damage, paired statistics, evaluation summaries, validation tuning."""
