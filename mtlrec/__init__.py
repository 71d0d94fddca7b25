"""mtlrec: a config-driven experiment runner for multi-task recommendation models."""

__version__ = "0.1.0"
