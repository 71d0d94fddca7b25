"""Training: objective (per-task losses), metrics over whole splits, the trainer, checkpoints."""
