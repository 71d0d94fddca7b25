"""Run directories: written atomically by training, read back by compare/evaluate/predict."""
