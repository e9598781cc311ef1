"""Training data: synthetic volumes and datasets."""
