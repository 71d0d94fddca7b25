"""`mmoe_synthetic`: the MMoE paper's synthetic data with controllable task correlation.

Ma et al., "Modeling Task Relationships in Multi-task Learning with Multi-gate Mixture-of-Experts",
KDD 2018, Sec. 3.2. Generated on first use (like synthetic_ccp) and cached per parameter set:

    mtlrec train model=mmoe dataset=mmoe_synthetic dataset.correlation=0.5
    mtlrec train -m model=mmoe,shared_bottom dataset=mmoe_synthetic dataset.correlation=0.5,0.9,1.0

Generator (d = dataset.input_dim, p = dataset.correlation, n = dataset.num_rows):
    u1, u2: orthogonal unit vectors in R^d (Gram-Schmidt of two Gaussian vectors)
    w1 = c u1,   w2 = c (p u1 + sqrt(1 - p^2) u2)          so cos(w1, w2) = p
    x ~ N(0, I_d)
    y_k = w_k.x + sum_{i=1..m} sin(a_i w_k.x + b_i) + eps_k,   eps_k ~ N(0, 0.01)  (variance 0.01)

The paper leaves c, m, a_i, b_i open. mtlrec uses c = 1 (so w_k.x ~ N(0, 1)), m = 10, and draws
a_i, b_i ~ N(0, 1) once from the generator seed. u1, u2, a, b depend only on (generator_seed, d),
not on p, so a sweep over p changes the task relation and nothing else. Pearson corr(y1, y2)
grows with p and is ~1 at p = 1 (only the noise differs).

Stored: dense features x0..x{d-1}, regression labels y1, y2 (tasks task1, task2), split 80/10/10
at random (seeded).

Generation and writing run CHUNK_ROWS rows at a time, so memory is bounded by a chunk plus 9
bytes per row (the seeded split permutation); the rows are bit-identical to drawing x, then
eps_1, then eps_2 in one go (the streams of eps_1 and eps_2 start where x and eps_1 end, found
by one pass that draws and drops them).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mtlrec.data.sources import register
from mtlrec.data.sources.base import DatasetConfig, DatasetSource
from mtlrec.data.spec import SPEC_FILE, DatasetSpec, FeatureSpec, TaskSpec
from mtlrec.errors import MtlrecError

log = logging.getLogger(__name__)

SCALE_C = 1.0
NUM_SINES_M = 10
NOISE_VARIANCE = 0.01
SPLIT_FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}
CHUNK_ROWS = 1 << 16  # rows made at a time (any value gives the same data)


@dataclass
class MmoeSyntheticConfig(DatasetConfig):
    correlation: float = 0.5  # cos(w1, w2), in [-1, 1]
    input_dim: int = 100
    num_rows: int = 10_000
    generator_seed: int = 0

    def validate(self) -> None:
        super().validate()
        check_params(self.num_rows, self.input_dim, self.correlation)


def check_params(num_rows: int, input_dim: int, correlation: float) -> None:
    if not -1.0 <= correlation <= 1.0:
        raise MtlrecError(f"dataset.correlation must be in [-1, 1], got {correlation}")
    if input_dim < 2:
        raise MtlrecError(
            f"dataset.input_dim must be >= 2 (two orthogonal vectors), got {input_dim}"
        )
    if num_rows < 100:
        raise MtlrecError(f"dataset.num_rows must be >= 100, got {num_rows}")


def task_weights(input_dim: int, correlation: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """w1, w2 with |w1| = |w2| = c and cos(w1, w2) = p."""
    rng = np.random.default_rng([seed, input_dim, 0])
    q, _ = np.linalg.qr(rng.normal(size=(input_dim, 2)))
    u1, u2 = q[:, 0], q[:, 1]
    w1 = SCALE_C * u1
    w2 = SCALE_C * (correlation * u1 + math.sqrt(max(0.0, 1.0 - correlation**2)) * u2)
    return w1, w2


def _chunks(num_rows: int) -> Iterator[int]:
    for start in range(0, num_rows, CHUNK_ROWS):
        yield min(CHUNK_ROWS, num_rows - start)


def _after(rng: np.random.Generator, draw) -> np.random.Generator:
    """A generator in the state `rng` is left in by `draw(rng, rows)` over all chunks."""
    skip = np.random.Generator(type(rng.bit_generator)())
    skip.bit_generator.state = rng.bit_generator.state
    draw(skip)
    return skip


def iter_chunks(
    num_rows: int, input_dim: int, correlation: float, seed: int
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(x [rows, d] float32, y1, y2) of the generator above, CHUNK_ROWS rows at a time."""
    check_params(num_rows, input_dim, correlation)
    w1, w2 = task_weights(input_dim, correlation, seed)
    shape_rng = np.random.default_rng([seed, input_dim, 1])
    a = shape_rng.normal(size=NUM_SINES_M)
    b = shape_rng.normal(size=NUM_SINES_M)
    noise_sd = math.sqrt(NOISE_VARIANCE)
    x_rng = np.random.default_rng([seed, input_dim, 2])

    def skip_x(r):
        for rows in _chunks(num_rows):
            r.normal(size=(rows, input_dim))

    def skip_noise(r):
        for rows in _chunks(num_rows):
            r.normal(0.0, noise_sd, size=rows)

    noise1 = _after(x_rng, skip_x)
    noise2 = _after(noise1, skip_noise)
    for rows in _chunks(num_rows):
        x = x_rng.normal(size=(rows, input_dim))
        ys = []
        for w, noise in ((w1, noise1), (w2, noise2)):
            z = x @ w
            y = z + np.sin(np.outer(z, a) + b).sum(axis=1)
            ys.append((y + noise.normal(0.0, noise_sd, size=rows)).astype(np.float32))
        yield x.astype(np.float32), ys[0], ys[1]


def generate(
    num_rows: int, input_dim: int, correlation: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x [n, d] float32, y1 [n], y2 [n]) of the generator above, in memory."""
    parts = list(iter_chunks(num_rows, input_dim, correlation, seed))
    return tuple(np.concatenate([p[k] for p in parts]) for k in range(3))  # type: ignore[return-value]


def dataset_spec(
    name: str, num_rows: int, input_dim: int, correlation: float, seed: int
) -> DatasetSpec:
    return DatasetSpec(
        name=name,
        features=tuple(FeatureSpec(f"x{i}", "dense") for i in range(input_dim)),
        labels=("y1", "y2"),
        tasks=(TaskSpec("task1", "y1", "regression"), TaskSpec("task2", "y2", "regression")),
        splits={s: f"{s}.parquet" for s in SPLIT_FRACTIONS},
        info={
            # the generator's name as first recorded (part of a checkpoint's data fingerprint,
            # training/binding.py): kept when the generator moved into this source module
            "generator": "mtlrec.data.mmoe_synthetic (MMoE paper Sec. 3.2)",
            "num_rows": num_rows,
            "input_dim": input_dim,
            "correlation": correlation,
            "generator_seed": seed,
            "c": SCALE_C,
            "m": NUM_SINES_M,
            "a_b": "a_i, b_i ~ N(0, 1) from the generator seed",
            "noise_variance": NOISE_VARIANCE,
        },
    )


def split_codes(num_rows: int, input_dim: int, seed: int) -> np.ndarray:
    """0/1/2 (train/val/test) per row: consecutive pieces of a seeded permutation of the rows."""
    from mtlrec.data.generated import SPLIT_NAMES, split_sizes

    order = np.random.default_rng([seed, input_dim, 3]).permutation(num_rows)
    codes = np.empty(num_rows, dtype=np.int8)
    lo = 0
    for k, size in enumerate(split_sizes(num_rows, SPLIT_FRACTIONS)):
        codes[order[lo : lo + size]] = k
        lo += size
    assert len(SPLIT_NAMES) == 3
    return codes


def write_prepared(
    directory: Path, name: str, num_rows: int, input_dim: int, correlation: float, seed: int
) -> DatasetSpec:
    from mtlrec.data.generated import SplitWriter

    spec = dataset_spec(name, num_rows, input_dim, correlation, seed)
    codes = split_codes(num_rows, input_dim, seed)
    start = 0
    with SplitWriter(directory, spec) as writer:
        for x, y1, y2 in iter_chunks(num_rows, input_dim, correlation, seed):
            rows = len(y1)
            columns = {f"x{i}": x[:, i] for i in range(input_dim)} | {"y1": y1, "y2": y2}
            writer.write(columns, codes[start : start + rows])
            start += rows
    spec.save(directory)
    return spec


def _params(cfg: MmoeSyntheticConfig) -> tuple[int, int, float, int]:
    return cfg.num_rows, cfg.input_dim, cfg.correlation, cfg.generator_seed


def ensure_prepared(cfg: MmoeSyntheticConfig) -> Path:
    """The cached dataset dir of this parameter set, generated first when missing."""
    from mtlrec.data.prepare.publish import generate_once

    path = cfg.path
    if path is None:
        raise MtlrecError(f"dataset '{cfg.name}': dataset.path (where to generate it) is not set")
    if (path / SPEC_FILE).is_file():
        return path
    n, d, p, seed = _params(cfg)
    check_params(n, d, p)
    name = cfg.name or "mmoe_synthetic"
    return generate_once(
        path,
        lambda tmp: write_prepared(tmp, name, n, d, p, seed),
        f"mmoe_synthetic (n={n}, d={d}, p={p:g}, seed {seed})",
    )


def prepare(cfg: MmoeSyntheticConfig, out_dir: Path):
    """`mtlrec prepare dataset=mmoe_synthetic`: generate into the staging dir."""
    import pyarrow.parquet as pq

    from mtlrec.data.prepare import Result, SplitSummary

    n, d, p, seed = _params(cfg)
    spec = write_prepared(out_dir, cfg.name or "mmoe_synthetic", n, d, p, seed)
    summary = {}
    for split, file in spec.splits.items():
        t = pq.read_table(out_dir / file, columns=["y1", "y2"])
        summary[split] = SplitSummary(
            rows=t.num_rows,
            positives={"task1": float(np.sum(t["y1"])), "task2": float(np.sum(t["y2"]))},
            space={"task1": t.num_rows, "task2": t.num_rows},
        )
    return Result(out_dir, spec, summary, {})


@register
class MmoeSynthetic(DatasetSource):
    name = "mmoe_synthetic"
    Config = MmoeSyntheticConfig
    generated = True
    preparable = True

    def generate(self, cfg):
        return ensure_prepared(cfg)

    def prepare(self, cfg, out_dir):
        return prepare(cfg, out_dir)
