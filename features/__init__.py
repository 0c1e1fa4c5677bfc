"""saefs library: pure, importable building blocks (no knowledge of the repo's file layout)."""
