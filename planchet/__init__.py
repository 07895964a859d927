"""Planchet: dispatch the items of a large file to many workers, nothing lost or written twice."""

__version__ = "1.0.0"
