"""`mtlrec prepare`: raw files -> a prepared dataset (split parquet files + spec.json + vocab.parquet).

    mtlrec prepare dataset=census dataset.raw_dir=~/data/census-income-kdd
    mtlrec prepare --config-dir my_conf dataset=my_data          # bring-your-own CSV
    mtlrec prepare dataset=census overwrite=true                 # prepare again over an old copy

The dataset config (conf/dataset/NAME.yaml, or the user's own) is the one `mtlrec train` reads:
`path` is where the prepared dataset lives; the raw-file keys next to it say how to build it.
Which code builds it: the dataset's source (mtlrec.data.sources), chosen by `preparer` or name.

Pipeline (bounded memory: only vocabularies and a few numbers per dense column are held; rows
stream through in blocks of `block_size_mb`, default 1 MB: pyarrow's CSV reader keeps ~32 blocks
in flight, so bigger blocks cost memory, not much speed; see scripts/bench_prepare.py):

    plan.py       what to read, split and encode (Plan, RawSource, ReadOptions)
    config.py     the option parsers every dataset's plan uses, and the checks of a Plan
                  (the generic `preparer: csv` plan is mtlrec/data/sources/csv.py)
    reading.py    raw CSV/TSV/parquet in blocks; a header's BOM is dropped, a repeated name is an error
    splitting.py  which split a row goes to (files, seeded hash of the row, or a time column)
    fitting.py    pass 1 (train rows only): value counts per sparse field; per dense column the
                  count, mean and M2 merged block by block (Chan et al.), min, max (and of log1p x)
    encoding.py   pass 2 (every row): sparse value -> id, dense fill + transform, label and funnel
                  checks, one parquet writer per split
    pipeline.py   run_plan: fit, encode, vocab.parquet, spec.json (last)
    publish.py    the staged dir renamed into place atomically, never over a dataset without
                  overwrite=true (also when two prepares race), never under a running reader
    command.py    the CLI: compose conf/prepare.yaml, prepare through the source
                  (mtlrec.data.sources.prepare_dataset), print a summary

Sparse ids: values seen at least `min_count` times in the train split get ids 1..V (most frequent
first, ties by value); id 0 is the field's one out-of-vocabulary id, shared by rare values, values
never seen in train and (after `""`-filling) missing values that are rare. vocab_size = V + 1.

Dense transforms (statistics from the train split only, after the fill value replaced missing
values; the fill value is in raw units):
    none               x
    standardize        (x - mean) / std                     (std = 0 -> 1)
    log1p_standardize  (log(1 + x) - mean_l) / std_l        (needs x > -1)
    minmax             (x - min) / (max - min)              (max = min -> 0; val/test not clipped)

Splits: given files (`split.by: files`, one file per split; a file entry may instead carry
`fractions` to be split itself, e.g. a test file split 1:1 into val/test), a seeded random split by
fractions (`split.by: random`), or by a time/order column (`split.by: column`: the oldest
`fractions.train` of the rows train, then val, then test; cut values computed from the column or
given as `split.boundaries`). The random split is streamed: a row goes to a split by a seeded hash
of (seed, file number, row number) compared with the cumulative fractions, so it is exactly
reproducible but the split sizes are the fractions only up to sampling noise (+-0.2% at 100k rows).

Funnel: rows where a later label is 1 without the earlier one (a conversion without a click) are
one error line with their counts, or dropped and counted with `funnel_violations: drop`
(mtlrec.data.funnel). Everything is written to a temporary sibling directory that is renamed into
place when complete: an interrupted or failed prepare leaves nothing that `train` would pick up.
"""

from mtlrec.data.prepare.command import (
    compose_prepare,
    dataset_override,
    print_summary,
    train_hint,
)
from mtlrec.data.prepare.config import (
    check_fractions,
    check_plan,
    raw_file,
    read_options,
    set_dense_options,
)
from mtlrec.data.prepare.encoding import SplitSummary, apply_transform, encode
from mtlrec.data.prepare.fitting import DenseStats, Fitted, Moments, ValueCounter, fit
from mtlrec.data.prepare.pipeline import Result, run_plan
from mtlrec.data.prepare.plan import (
    OOV_ID,
    SPLITS,
    TRANSFORMS,
    VOCAB_FILE,
    Plan,
    RawSource,
    ReadOptions,
)
from mtlrec.data.prepare.publish import clean_stale, generate_once, hold_dataset, staged_dir
from mtlrec.data.prepare.reading import Block, header_columns, iter_blocks
from mtlrec.data.prepare.splitting import column_cuts, row_uniforms, split_codes

__all__ = [
    "OOV_ID",
    "SPLITS",
    "TRANSFORMS",
    "VOCAB_FILE",
    "Block",
    "DenseStats",
    "Fitted",
    "Moments",
    "Plan",
    "RawSource",
    "ReadOptions",
    "Result",
    "SplitSummary",
    "ValueCounter",
    "apply_transform",
    "check_fractions",
    "check_plan",
    "clean_stale",
    "column_cuts",
    "compose_prepare",
    "dataset_override",
    "encode",
    "fit",
    "generate_once",
    "header_columns",
    "hold_dataset",
    "iter_blocks",
    "print_summary",
    "raw_file",
    "read_options",
    "row_uniforms",
    "run_plan",
    "set_dense_options",
    "split_codes",
    "staged_dir",
    "train_hint",
]
