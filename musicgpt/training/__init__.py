"""Training (torch): configs, batches, the loop, run directories, evaluation and the metrics log."""
