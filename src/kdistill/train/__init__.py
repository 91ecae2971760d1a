"""Training: the one loop, its checkpoints, the label and token step adapters, and how a student starts."""
