"""Fixtures for the converter tests (synthetic Meta checkpoints the tests write)."""
