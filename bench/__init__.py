"""Side-by-side benchmark: the PyTorch pipeline, the ORT model-only ceiling, and this service."""
