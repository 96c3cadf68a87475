"""Core engine pieces: filters, search, storage helpers."""
