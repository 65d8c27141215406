"""CLI command groups, one module per noun (models, index, serve...)."""
