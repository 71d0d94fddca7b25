"""`synthetic_ccp`: the embedded impression -> click -> conversion dataset.

Generated deterministically from `generator_seed` on first use, cached as a prepared dataset and
reused. It is small enough to train in seconds and shaped like Ali-CCP, with the one property the
ESMM paper is about: a genuine sample-selection effect.

Fields (vocabulary sizes)
    user:    user_id (20,000; Zipf 1.05 impression frequency), user_age (8), user_gender (3),
             user_city (200) - attributes are fixed functions of user_id
    item:    item_id (10,000; Zipf 1.1), item_category (50), item_brand (500),
             item_price_level (10) - attributes are fixed functions of item_id
    context: hour (24), device (4), position (10; uniform slot on the result page)
    dense:   user_activity (log-normal per user, standardized), item_price (log price, standardized),
             item_rating (per item, standardized)

Generating formulas (every table below is drawn once from the generator seed)
    a_f[v] ~ N(0, s_f^2)                          click effect of value v of sparse field f
    c_f[v] = r_f a_f[v] + sqrt(1 - r_f^2) e_f[v]    conversion effect, e_f[v] ~ N(0, s_f^2):
                                                  correlated with, but not equal to, the click effect
    P_u, Q_i, Z_i ~ N(0, I_8);  R_i = 0.9 Q_i + sqrt(0.19) Z_i     user / item latent tastes
    click_logit = b_click + sum_f a_f[x_f] + 0.8 <P_u, Q_i>/sqrt(8) - 0.25 position + 0.3 user_activity
    cvr_logit   = b_cvr   + sum_f c_f[x_f] + 0.8 <P_u, R_i>/sqrt(8) - 0.6 item_price + 0.4 item_rating
    p_click = sigmoid(click_logit),  p_cvr = sigmoid(cvr_logit),  p_ctcvr = p_click * p_cvr
    click ~ Bernoulli(p_click),  conversion_if_clicked ~ Bernoulli(p_cvr),
    conversion = click * conversion_if_clicked      (no conversion without a click)

Scales s_f and correlations r_f (USER_FIELDS, ITEM_FIELDS, CONTEXT_FIELDS below): user_id 0.7/0.9,
item_id 0.8/0.9, item_category and item_brand 0.3/0.9, user_age 0.3/0.3, user_gender 0.1/0.5,
user_city 0.2/0.5, item_price_level 0.2/0.0, hour and device 0.2/0.5, position 0 (its effect is the
explicit -0.25 position term, on clicks only). Most conversion signal sits in the high-cardinality
ids, whose conversion effects track their click effects: a model that learns the id embeddings from
all impressions (ESMM's shared embedding) can use them for CVR; one that sees clicked rows only
(about 4.5% of the data) cannot.

b_click is set by bisection so that mean(p_click) = 4.5%, b_cvr so that the conversion rate among
clicks, sum(p_click p_cvr) / sum(p_click), is 10%. Position drives clicks only and price pushes
clicks and conversions in opposite directions (cheap items are clicked more; expensive ones convert
less): the clicked rows are a biased sample of the impressions, which is what a CVR model trained
on clicked rows only (cvr_base) gets wrong and ESMM avoids.

Stored per impression besides the features: click, conversion, conversion_if_clicked (the
counterfactual label, so CVR can be scored over the entire impression space) and the true
probabilities p_click, p_cvr, p_ctcvr. Split 70/15/15 at random (seeded) into train/val/test.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mtlrec.data.spec import SPEC_FILE, DatasetSpec, FeatureSpec, FunnelSpec, TaskSpec
from mtlrec.errors import MtlrecError

log = logging.getLogger(__name__)

# Bump when the generated data changes: cached copies of another version are refused, never reused.
GENERATOR_VERSION = 2
TARGET_CTR = 0.045
TARGET_CVR_AMONG_CLICKS = 0.10
LATENT_DIM = 8
LATENT_CORRELATION = 0.9  # correlation of the item tastes driving clicks (Q) and conversions (R)
SPLIT_FRACTIONS = {"train": 0.70, "val": 0.15, "test": 0.15}

# field -> (vocabulary size, click-effect scale s_f, click/conversion effect correlation r_f)
USER_FIELDS = {
    "user_id": (20_000, 0.7, 0.9),
    "user_age": (8, 0.3, 0.3),
    "user_gender": (3, 0.1, 0.5),
    "user_city": (200, 0.2, 0.5),
}
ITEM_FIELDS = {
    "item_id": (10_000, 0.8, 0.9),
    "item_category": (50, 0.3, 0.9),
    "item_brand": (500, 0.3, 0.9),
    "item_price_level": (10, 0.2, 0.0),
}
CONTEXT_FIELDS = {"hour": (24, 0.2, 0.5), "device": (4, 0.2, 0.5), "position": (10, 0.0, 0.0)}
DENSE_FIELDS = ("user_activity", "item_price", "item_rating")


def _zipf_sample(rng: np.random.Generator, vocab: int, exponent: float, n: int) -> np.ndarray:
    """Ids whose frequencies fall off like 1/rank^exponent; which id gets which rank is random."""
    weights = 1.0 / np.arange(1, vocab + 1) ** exponent
    ranked = rng.choice(vocab, size=n, p=weights / weights.sum())
    return rng.permutation(vocab)[ranked]


def _standardize(x: np.ndarray) -> np.ndarray:
    return ((x - x.mean()) / (x.std() + 1e-12)).astype(np.float32)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _bisect_offset(target_fn, target: float, lo: float = -30.0, hi: float = 30.0) -> float:
    """The offset b with target_fn(b) == target, for target_fn increasing in b."""
    for _ in range(100):
        mid = (lo + hi) / 2
        if target_fn(mid) < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def generate(num_rows: int, seed: int) -> dict[str, np.ndarray]:
    """All columns of the dataset (features, labels, true probabilities), row order random."""
    rng = np.random.default_rng(seed)
    n = num_rows
    cols: dict[str, np.ndarray] = {}

    users = _zipf_sample(rng, USER_FIELDS["user_id"][0], 1.05, n)
    items = _zipf_sample(rng, ITEM_FIELDS["item_id"][0], 1.1, n)
    cols["user_id"], cols["item_id"] = users, items
    for name in ("user_age", "user_gender", "user_city"):
        cols[name] = rng.integers(0, USER_FIELDS[name][0], size=USER_FIELDS["user_id"][0])[users]
    for name in ("item_category", "item_brand", "item_price_level"):
        cols[name] = rng.integers(0, ITEM_FIELDS[name][0], size=ITEM_FIELDS["item_id"][0])[items]
    for name, (vocab, _, _) in CONTEXT_FIELDS.items():
        cols[name] = rng.integers(0, vocab, size=n)

    # Dense features: fixed per user / per item, price follows the item's price level.
    activity = rng.lognormal(0.0, 0.7, size=USER_FIELDS["user_id"][0])[users]
    price_of_item = (
        np.exp(rng.normal(0.0, 0.3, size=ITEM_FIELDS["item_id"][0]))
        * (1.0 + np.arange(10))[rng.integers(0, 10, size=ITEM_FIELDS["item_id"][0])]
    )
    rating = rng.normal(0.0, 1.0, size=ITEM_FIELDS["item_id"][0])[items]
    cols["user_activity"] = _standardize(np.log(activity))
    cols["item_price"] = _standardize(np.log(price_of_item[items]))
    cols["item_rating"] = _standardize(rating)

    click_logit = np.zeros(n)
    cvr_logit = np.zeros(n)
    for name, (vocab, scale, corr) in {**USER_FIELDS, **ITEM_FIELDS, **CONTEXT_FIELDS}.items():
        a = rng.normal(0.0, scale, size=vocab)
        c = corr * a + np.sqrt(1.0 - corr**2) * rng.normal(0.0, scale, size=vocab)
        click_logit += a[cols[name]]
        cvr_logit += c[cols[name]]

    p_user = rng.normal(size=(USER_FIELDS["user_id"][0], LATENT_DIM))
    q_item = rng.normal(size=(ITEM_FIELDS["item_id"][0], LATENT_DIM))
    r_item = LATENT_CORRELATION * q_item + np.sqrt(1 - LATENT_CORRELATION**2) * rng.normal(
        size=q_item.shape
    )
    scale = 0.8 / np.sqrt(LATENT_DIM)
    click_logit += scale * np.einsum("nk,nk->n", p_user[users], q_item[items])
    cvr_logit += scale * np.einsum("nk,nk->n", p_user[users], r_item[items])
    click_logit += -0.25 * cols["position"] + 0.3 * cols["user_activity"] - 0.2 * cols["item_price"]
    cvr_logit += -0.6 * cols["item_price"] + 0.4 * cols["item_rating"]

    b_click = _bisect_offset(lambda b: _sigmoid(click_logit + b).mean(), TARGET_CTR)
    p_click = _sigmoid(click_logit + b_click)
    b_cvr = _bisect_offset(
        lambda b: (p_click * _sigmoid(cvr_logit + b)).sum() / p_click.sum(), TARGET_CVR_AMONG_CLICKS
    )
    p_cvr = _sigmoid(cvr_logit + b_cvr)

    click = (rng.random(n) < p_click).astype(np.int8)
    conversion_if_clicked = (rng.random(n) < p_cvr).astype(np.int8)
    cols["click"] = click
    cols["conversion"] = click * conversion_if_clicked
    cols["conversion_if_clicked"] = conversion_if_clicked
    cols["p_click"] = p_click.astype(np.float32)
    cols["p_cvr"] = p_cvr.astype(np.float32)
    cols["p_ctcvr"] = (p_click * p_cvr).astype(np.float32)
    for name in {**USER_FIELDS, **ITEM_FIELDS, **CONTEXT_FIELDS}:
        cols[name] = cols[name].astype(np.int32)
    return cols


def dataset_spec(num_rows: int, seed: int) -> DatasetSpec:
    features = [
        FeatureSpec(name, "sparse", vocab)
        for name, (vocab, _, _) in {**USER_FIELDS, **ITEM_FIELDS, **CONTEXT_FIELDS}.items()
    ]
    features += [FeatureSpec(name, "dense") for name in DENSE_FIELDS]
    return DatasetSpec(
        name="synthetic_ccp",
        features=tuple(features),
        labels=("click", "conversion", "conversion_if_clicked"),
        tasks=(
            TaskSpec("ctr", "click", "binary"),
            TaskSpec("cvr", "conversion", "binary", where="click"),
        ),
        funnel=FunnelSpec("click", "conversion", "conversion_if_clicked"),
        splits={s: f"{s}.parquet" for s in SPLIT_FRACTIONS},
        info={
            "generator": "mtlrec.data.synthetic_ccp",
            "generator_version": GENERATOR_VERSION,
            "num_rows": num_rows,
            "generator_seed": seed,
            "truth_columns": ["p_click", "p_cvr", "p_ctcvr"],
        },
    )


def write_random_splits(
    directory: Path,
    columns: dict[str, np.ndarray],
    spec: DatasetSpec,
    fractions: dict[str, float],
    order: np.ndarray,
) -> None:
    """Write generated columns as the spec's train/val/test parquet files, then spec.json.

    The splits are consecutive pieces of the seeded row permutation `order`, sized by `fractions`;
    within a split, rows keep their generated order. Shared by the embedded generators.
    """
    n = len(order)
    n_train = int(round(n * fractions["train"]))
    n_val = int(round(n * fractions["val"]))
    bounds = {
        "train": (0, n_train),
        "val": (n_train, n_train + n_val),
        "test": (n_train + n_val, n),
    }
    for split, (lo, hi) in bounds.items():
        rows = np.sort(order[lo:hi])
        table = pa.table({name: values[rows] for name, values in columns.items()})
        pq.write_table(table, directory / spec.splits[split])
    spec.save(directory)


def write_prepared(directory: Path, num_rows: int, seed: int) -> None:
    order = np.random.default_rng(seed + 1).permutation(num_rows)
    spec = dataset_spec(num_rows, seed)
    write_random_splits(directory, generate(num_rows, seed), spec, SPLIT_FRACTIONS, order)


def ensure_prepared(path: str | Path, num_rows: int, seed: int) -> Path:
    """The dataset directory, generating it first if it is not cached yet.

    Generation goes through the prepare pipeline's staged dir (mtlrec.data.prepare.publish): an
    interrupted run never leaves a half-written dataset that a later run would pick up, and
    parallel jobs generating the same dataset reuse the first one's.
    """
    from mtlrec.data.prepare.publish import generate_once

    path = Path(path).expanduser()
    if (path / SPEC_FILE).is_file():
        version = DatasetSpec.load(path).info.get("generator_version")
        if version != GENERATOR_VERSION:
            raise MtlrecError(
                f"{path}: generated by synthetic_ccp generator version {version}, this mtlrec makes "
                f"version {GENERATOR_VERSION}; remove the directory to regenerate it"
            )
        return path
    if num_rows < 100:
        raise MtlrecError(f"dataset.num_rows must be >= 100, got {num_rows}")
    return generate_once(
        path,
        lambda tmp: write_prepared(tmp, num_rows, seed),
        f"synthetic_ccp ({num_rows} rows, seed {seed})",
    )
