"""The shape of a dataset source: a typed Config plus a raw preparer and/or generate-on-first-use."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar, Literal

from mtlrec.data.spec import SPEC_FILE
from mtlrec.errors import MtlrecError


@dataclass
class DatasetConfig:
    """Keys every dataset config has (conf/dataset/*.yaml), whatever builds the dataset."""

    name: str = ""
    path: Path | None = None  # the prepared dataset dir (what `mtlrec train` reads), ~ expanded
    tasks: list[str] | None = None  # task names to train on (null = all of the dataset's)
    preparer: str | None = None  # which source builds it (default: the one named like `name`)
    funnel_violations: Literal["error", "drop"] = "error"
    # A column of per-row weights (prepare keeps it; train weighs every task's loss by it)
    sample_weight: str | None = None

    def validate(self) -> None:
        """Ranges and combinations (types are checked by config_schema.build)."""

    def as_mapping(self) -> dict[str, Any]:
        """The typed values by key, for the option parsers the prepare pipeline shares between
        datasets (mtlrec.data.prepare.config: read options, dense transforms, funnel policy)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class RawFilesConfig(DatasetConfig):
    """Keys of datasets that `mtlrec prepare` builds from raw files (see mtlrec.data.prepare)."""

    raw_dir: Path | None = None  # where the raw files are (relative file names), ~ expanded
    min_count: int = 1
    dense_transform: str = (
        "standardize"  # checked per column by prepare (one line naming the column)
    )
    dense_transforms: dict[str, str] | None = None
    dense_fill: float = 0.0
    dense_fills: dict[str, float] | None = None
    # inf, NaN or |x| > float32's max in a dense column: error | clip | impute (docs/datasets.md)
    dense_nonfinite: Literal["error", "clip", "impute"] = "error"
    block_size_mb: float = 1.0
    vocab_from: Path | None = None  # a prepared dataset whose ids this one keeps (next-day data)

    def validate(self) -> None:
        super().validate()
        if self.min_count < 1:
            raise MtlrecError(f"dataset.min_count must be >= 1, got {self.min_count}")
        if not self.block_size_mb > 0:
            raise MtlrecError(f"dataset.block_size_mb must be > 0, got {self.block_size_mb}")


@dataclass
class ReadConfig(RawFilesConfig):
    """Raw files whose parsing the config describes (csv | tsv | parquet)."""

    format: Literal["auto", "csv", "tsv", "parquet"] = "auto"
    delimiter: str | None = None
    header: bool = True
    column_names: list[str] | None = None


class DatasetSource:
    """One kind of dataset. Subclasses set `name`, `Config` and implement prepare and/or generate;
    both take the source's typed Config (built and checked by `validate_dataset_config`).

    - `prepare(config, out_dir)`: build the prepared dataset from raw files into the staging dir
      `out_dir` (what `mtlrec prepare dataset=NAME` runs); returns a prepare Result.
    - `generate(config)`: make the dataset on first use (`generated = True`), return its dir.
    """

    name: ClassVar[str]
    Config: ClassVar[type[DatasetConfig]] = DatasetConfig
    generated: ClassVar[bool] = False
    preparable: ClassVar[bool] = False
    keeps_sample_weight: ClassVar[bool] = False  # prepare honours dataset.sample_weight

    def prepare(self, config: Any, out_dir: Path):
        raise MtlrecError(f"dataset '{config.name}': `mtlrec prepare` cannot build it")

    def generate(self, config: Any) -> Path:
        raise NotImplementedError

    def resolve(self, config: DatasetConfig) -> Path:
        """The directory of the configured dataset, ready to load."""
        if self.generated:
            return self.generate(config)
        name, path = config.name, config.path
        if path is None:
            raise MtlrecError(
                f"dataset '{name}': dataset.path is not set; point it at a prepared dataset directory"
            )
        if not path.exists():
            raise MtlrecError(
                f"{path}: data dir of dataset '{name}' does not exist; run `mtlrec prepare dataset={name}` or fix dataset.path"
            )
        if not (path / SPEC_FILE).is_file():
            raise MtlrecError(
                f"{path}: holds no {SPEC_FILE}, so dataset '{name}' is not prepared; run `mtlrec prepare dataset={name}`"
            )
        return path
