"""repwam: world action models on representation visual-action tokenizers (RepWAM)."""

__version__ = "0.1.0"
