"""Weights on disk: the embedded default model, the catalog, the downloader and the store."""
