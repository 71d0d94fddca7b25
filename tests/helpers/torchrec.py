"""The trainer settings `torchrec_backend.shard_layer` reads, for tests that shard a layer."""

from __future__ import annotations

from types import SimpleNamespace


def shard_settings(**changes) -> SimpleNamespace:
    """trainer.* of a one-rank CPU run with the fused row-wise Adagrad, with `changes` made."""
    base = dict(
        lr=0.1,
        embedding_lr=None,
        embedding_optimizer="rowwise_adagrad",
        sharding="auto",
        shard_memory_mb=None,
        devices=1,
    )
    return SimpleNamespace(**{**base, **changes})
