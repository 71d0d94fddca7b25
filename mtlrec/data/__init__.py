"""Datasets: typed specs, prepared parquet on disk -> contiguous tensors, generators."""
