"""Sift's application layer: the `sift` command line (and, above the engine, whatever serves it)."""
