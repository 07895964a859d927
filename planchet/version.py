"""The package version, in a module of its own so that nothing imports from ``__init__``."""

__version__ = "1.0.0"
