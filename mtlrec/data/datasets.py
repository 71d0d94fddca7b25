"""Dataset name -> prepared dataset directory (generating or preparing it when that is possible)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mtlrec.data import mmoe_synthetic, synthetic_ccp
from mtlrec.data.spec import SPEC_FILE
from mtlrec.errors import MtlrecError

# Datasets that mtlrec can make by itself on first use: name -> function(dataset cfg) -> directory.
GENERATED: dict[str, Callable[[Mapping[str, Any]], Path]] = {
    "synthetic_ccp": lambda cfg: synthetic_ccp.ensure_prepared(
        cfg["path"], int(cfg["num_rows"]), int(cfg["generator_seed"])
    ),
    "mmoe_synthetic": lambda cfg: mmoe_synthetic.ensure_prepared(cfg),
}
# Datasets built from raw files by `mtlrec prepare` (mtlrec.data.prepare.PREPARERS): census,
# aliccp, aliexpress and bring-your-own CSVs (preparer: csv). Training on one that is not prepared
# yet stops with one line naming the `mtlrec prepare` command (it never prepares implicitly).


def resolve_dataset_dir(cfg: Mapping[str, Any]) -> Path:
    """The directory of the configured dataset, ready to load (spec.json + split parquet files)."""
    name = cfg.get("name")
    if name in GENERATED:
        return GENERATED[name](cfg)
    if not cfg.get("path"):
        raise MtlrecError(
            f"dataset '{name}': dataset.path is not set; point it at a prepared dataset directory"
        )
    path = Path(str(cfg["path"])).expanduser()
    if not path.exists():
        raise MtlrecError(
            f"{path}: data dir of dataset '{name}' does not exist; run `mtlrec prepare dataset={name}` or fix dataset.path"
        )
    if not (path / SPEC_FILE).is_file():
        raise MtlrecError(
            f"{path}: holds no {SPEC_FILE}, so dataset '{name}' is not prepared; run `mtlrec prepare dataset={name}`"
        )
    return path
