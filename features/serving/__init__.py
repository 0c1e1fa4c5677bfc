"""Scoring texts in production: a dataset's champion probe read through the online store."""
