"""Fixtures for the tokenizer tests (tiny SentencePiece models the tests train)."""
