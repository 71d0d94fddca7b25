"""A directory already in prepared form (spec.json + split parquet files): `dataset=prepared`."""

from __future__ import annotations

from mtlrec.data.sources import register
from mtlrec.data.sources.base import DatasetConfig, DatasetSource


@register
class Prepared(DatasetSource):
    name = "prepared"
    Config = DatasetConfig
