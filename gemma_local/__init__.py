"""gemma-local: a local inference runtime for Google's Gemma 3."""

__version__ = "0.1.0"
