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
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from mtlrec.data.spec import SPEC_FILE, DatasetSpec, FeatureSpec, TaskSpec
from mtlrec.data.synthetic_ccp import write_random_splits
from mtlrec.errors import MtlrecError

log = logging.getLogger(__name__)

SCALE_C = 1.0
NUM_SINES_M = 10
NOISE_VARIANCE = 0.01
SPLIT_FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}


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


def generate(
    num_rows: int, input_dim: int, correlation: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x [n, d] float32, y1 [n], y2 [n]) of the generator above."""
    check_params(num_rows, input_dim, correlation)
    w1, w2 = task_weights(input_dim, correlation, seed)
    shape_rng = np.random.default_rng([seed, input_dim, 1])
    a = shape_rng.normal(size=NUM_SINES_M)
    b = shape_rng.normal(size=NUM_SINES_M)
    rng = np.random.default_rng([seed, input_dim, 2])
    x = rng.normal(size=(num_rows, input_dim))
    ys = []
    for w in (w1, w2):
        z = x @ w
        y = z + np.sin(np.outer(z, a) + b).sum(axis=1)
        ys.append(y + rng.normal(0.0, math.sqrt(NOISE_VARIANCE), size=num_rows))
    return x.astype(np.float32), ys[0].astype(np.float32), ys[1].astype(np.float32)


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


def write_prepared(
    directory: Path, name: str, num_rows: int, input_dim: int, correlation: float, seed: int
) -> DatasetSpec:
    x, y1, y2 = generate(num_rows, input_dim, correlation, seed)
    order = np.random.default_rng([seed, input_dim, 3]).permutation(num_rows)
    spec = dataset_spec(name, num_rows, input_dim, correlation, seed)
    columns = {f"x{i}": x[:, i] for i in range(input_dim)} | {"y1": y1, "y2": y2}
    write_random_splits(directory, columns, spec, SPLIT_FRACTIONS, order)
    return spec


def _params(cfg: Mapping[str, Any]) -> tuple[int, int, float, int]:
    return (
        int(cfg["num_rows"]),
        int(cfg["input_dim"]),
        float(cfg["correlation"]),
        int(cfg["generator_seed"]),
    )


def ensure_prepared(cfg: Mapping[str, Any]) -> Path:
    """The cached dataset dir of this parameter set, generated first when missing."""
    from mtlrec.data.prepare.publish import generate_once

    path = Path(str(cfg["path"])).expanduser()
    if (path / SPEC_FILE).is_file():
        return path
    n, d, p, seed = _params(cfg)
    check_params(n, d, p)
    name = str(cfg.get("name") or "mmoe_synthetic")
    return generate_once(
        path,
        lambda tmp: write_prepared(tmp, name, n, d, p, seed),
        f"mmoe_synthetic (n={n}, d={d}, p={p:g}, seed {seed})",
    )


def prepare(cfg: Mapping[str, Any], out_dir: Path):
    """`mtlrec prepare dataset=mmoe_synthetic`: generate into the staging dir."""
    from mtlrec.data.prepare import Result, SplitSummary

    n, d, p, seed = _params(cfg)
    spec = write_prepared(out_dir, str(cfg.get("name") or "mmoe_synthetic"), n, d, p, seed)
    summary = {}
    for split, file in spec.splits.items():
        t = pq.read_table(out_dir / file, columns=["y1", "y2"])
        summary[split] = SplitSummary(
            rows=t.num_rows,
            positives={"task1": float(np.sum(t["y1"])), "task2": float(np.sum(t["y2"]))},
            space={"task1": t.num_rows, "task2": t.num_rows},
        )
    return Result(out_dir, spec, summary, {})
