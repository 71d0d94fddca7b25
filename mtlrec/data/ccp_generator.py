"""The generator of `synthetic_ccp`, the embedded impression -> click -> conversion dataset.

The dataset source (config, cache dir, generate on first use) is mtlrec.data.sources.synthetic_ccp;
this module is the data itself: its formulas, tables, chunks and spec.

Generated deterministically from `generator_seed` on first use, cached as a prepared dataset and
reused. It is small enough to train in seconds and shaped like Ali-CCP, with the one property the
ESMM paper is about: a genuine sample-selection effect.

Fields (vocabulary sizes)
    user:    user_id (20,000; Zipf 1.05 impression frequency), user_age (8), user_gender (3),
             user_city (200) - attributes are fixed functions of user_id
    item:    item_id (10,000; Zipf 1.1), item_category (50), item_brand (500),
             item_price_level (10) - attributes are fixed functions of item_id
    context: hour (24), device (4), position (10; uniform slot on the result page)
    dense:   user_activity (log-normal per user), item_price (log price per item), item_rating
             (per item); each standardized with its exact mean and std over impressions (the
             id frequencies weight the per-user / per-item values), so no pass over the rows

Generating formulas (every table below is drawn once from the generator seed)
    a_f[v] ~ N(0, s_f^2)                          click effect of value v of sparse field f
    c_f[v] = r_f a_f[v] + sqrt(1 - r_f^2) e_f[v]    conversion effect, e_f[v] ~ N(0, s_f^2):
                                                  correlated with, but not equal to, the click effect
    P_u, Q_i, Z_i ~ N(0, I_8);  R_i = 0.9 Q_i + sqrt(0.19) Z_i     user / item latent tastes
    price_i = (1 + item_price_level_i) * exp(N(0, 0.3^2))          the price follows its level
    click_logit = b_click + sum_f a_f[x_f] + 0.8 <P_u, Q_i>/sqrt(8)
                  - 0.25 position + 0.3 user_activity - 0.2 item_price
    cvr_logit   = b_cvr   + sum_f c_f[x_f] + 0.8 <P_u, R_i>/sqrt(8) - 0.6 item_price + 0.4 item_rating
    p_click = sigmoid(click_logit),  p_cvr = sigmoid(cvr_logit),  p_ctcvr = p_click * p_cvr
    click ~ Bernoulli(p_click),  conversion_if_clicked ~ Bernoulli(p_cvr),
    conversion = click * conversion_if_clicked      (no conversion without a click)

(CLICK_TERMS and CVR_TERMS below hold the explicit coefficients; a test checks this text against
them.) Scales s_f and correlations r_f (USER_FIELDS, ITEM_FIELDS, CONTEXT_FIELDS below): user_id
0.7/0.9, item_id 0.8/0.9, item_category and item_brand 0.3/0.9, user_age 0.3/0.3, user_gender
0.1/0.5, user_city 0.2/0.5, item_price_level 0.2/0.0, hour and device 0.2/0.5, position 0 (its
effect is the explicit -0.25 position term, on clicks only). Most conversion signal sits in the
high-cardinality ids, whose conversion effects track their click effects: a model that learns the
id embeddings from all impressions (ESMM's shared embedding) can use them for CVR; one that sees
clicked rows only (about 4.5% of the data) cannot.

b_click is set by bisection so that mean(p_click) = 4.5%, b_cvr so that the conversion rate among
clicks, sum(p_click p_cvr) / sum(p_click), is 10%, both over the first CALIBRATION_ROWS rows (all
rows of a dataset up to that size). Position drives clicks only and price pushes clicks and
conversions in the same direction with different strength (-0.2 on clicks, -0.6 on conversions:
expensive items are clicked a little less and converted much less): the clicked rows are a biased
sample of the impressions, which is what a CVR model trained on clicked rows only (cvr_base) gets
wrong and ESMM avoids.

Generator options (dataset.* keys, class Setting; each off its default changes the data, so the
presets that set them have cache dirs of their own and the default data's dir refuses them)
    cvr_rate            conversion rate among clicks b_cvr is calibrated to (default 0.10)
    effect_correlation  replaces every r_f above and the latent correlation 0.9 (default null: keep
                        them); the weak setting (conf/dataset/synthetic_ccp_weak.yaml) uses
                        effect_correlation 0.2 and cvr_rate 0.4: click and conversion effects are
                        only weakly correlated and conversion among clicks is common
    action_rate         adds the ESM² stage (Wen et al., SIGIR 2020) between click and purchase:
                        a D-action (cart or wish) with mean p(action | click) = action_rate
                        (default null: no stage, no `action` column); preset
                        conf/dataset/synthetic_ccp_action.yaml (action_rate 0.3)

The D-action stage (when action_rate is set) draws from its own stream (seed, 3, k), so every other
column equals the dataset without it; the purchase is unchanged and the action depends on it:

    action_logit = b_action + 0.5 cvr_logit + 3.0 conversion_if_clicked       (cvr_logit w/o b_cvr)
    action_if_clicked ~ Bernoulli(sigmoid(action_logit)),  action = click * action_if_clicked
    p_action = p(action | click) = p_cvr s(a + 3.0) + (1 - p_cvr) s(a)        (a = the logit at 0)

so a buyer carts or wishes far more often than a non-buyer (the paper's premise: most purchases
come through a D-action), and p(buy | D) = p_cvr s(a + 3.0) / p_action, p(buy | O) = p_cvr
(1 - s(a + 3.0)) / (1 - p_action). b_action is calibrated like b_cvr (mean p_action over clicks =
action_rate); p_action is stored as a truth column.

Generation runs in chunks of CHUNK_ROWS rows (bounded memory whatever num_rows): chunk k's rows
come from its own stream seeded by (seed, 1, k), the tables from (seed, 0). Stored per impression
besides the features: click, conversion, conversion_if_clicked (the counterfactual label, so CVR
can be scored over the entire impression space) and the true probabilities p_click, p_cvr,
p_ctcvr. Split 70/15/15 at random (seeded, exact sizes) into train/val/test.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mtlrec.data.spec import DatasetSpec, FeatureSpec, FunnelSpec, TaskSpec

log = logging.getLogger(__name__)

# Bump when the generated data changes: cached copies of another version are refused, never reused.
GENERATOR_VERSION = 3
TARGET_CTR = 0.045
TARGET_CVR_AMONG_CLICKS = 0.10
LATENT_DIM = 8
LATENT_CORRELATION = 0.9  # correlation of the item tastes driving clicks (Q) and conversions (R)
SPLIT_FRACTIONS = {"train": 0.70, "val": 0.15, "test": 0.15}
CHUNK_ROWS = 1 << 18  # rows generated at a time (part of the generator: changing it changes data)
CALIBRATION_ROWS = 8 * CHUNK_ROWS  # rows the offsets b_click, b_cvr are calibrated on

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
SPARSE_FIELDS = {**USER_FIELDS, **ITEM_FIELDS, **CONTEXT_FIELDS}
DENSE_FIELDS = ("user_activity", "item_price", "item_rating")
# The explicit (non-embedding) terms of the two logits: column -> coefficient.
CLICK_TERMS = {"position": -0.25, "user_activity": 0.3, "item_price": -0.2}
CVR_TERMS = {"item_price": -0.6, "item_rating": 0.4}
LATENT_SCALE = 0.8
# The D-action stage (action_rate set): share of the conversion logit and lift of a purchase.
ACTION_CVR_SHARE = 0.5
ACTION_BUY_LIFT = 3.0


@dataclass(frozen=True)
class Setting:
    """The generator's options (see the module docstring); the defaults are the documented data."""

    cvr_rate: float = TARGET_CVR_AMONG_CLICKS
    effect_correlation: float | None = None
    action_rate: float | None = None

    def changed(self) -> dict[str, float]:
        """The options off their defaults (recorded in spec.json info, named in the cache dir)."""
        default = Setting()
        return {k: v for k, v in vars(self).items() if v is not None and v != getattr(default, k)}


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


@dataclass
class Tables:
    """Everything fixed per user / item / field value, drawn once from the seed."""

    user_cdf: np.ndarray  # impression probability of each user, cumulated
    item_cdf: np.ndarray
    attributes: dict[str, np.ndarray]  # user_* / item_* field -> value per user / item
    dense: dict[str, np.ndarray]  # dense column -> standardized value per user / item
    click_effect: dict[str, np.ndarray]  # field -> a_f per value
    cvr_effect: dict[str, np.ndarray]  # field -> c_f per value
    p_user: np.ndarray
    q_item: np.ndarray
    r_item: np.ndarray


def _zipf(rng: np.random.Generator, vocab: int, exponent: float) -> np.ndarray:
    """Per-id probabilities falling off like 1/rank^exponent; which id gets which rank is random."""
    weights = 1.0 / np.arange(1, vocab + 1) ** exponent
    prob = np.empty(vocab)
    prob[rng.permutation(vocab)] = weights / weights.sum()
    return prob


def _standardized(values: np.ndarray, prob: np.ndarray) -> np.ndarray:
    """Per-id values standardized with their exact mean/std over impressions (ids drawn by prob)."""
    mean = float(prob @ values)
    std = float(np.sqrt(prob @ (values - mean) ** 2))
    return ((values - mean) / (std + 1e-12)).astype(np.float32)


def draw_tables(seed: int, correlation: float | None = None) -> Tables:
    """The tables; `correlation` (effect_correlation) replaces every r_f and LATENT_CORRELATION."""
    rng = np.random.default_rng([seed, 0])
    n_users, n_items = USER_FIELDS["user_id"][0], ITEM_FIELDS["item_id"][0]
    user_p, item_p = _zipf(rng, n_users, 1.05), _zipf(rng, n_items, 1.1)
    attributes = {
        name: rng.integers(0, vocab, size=n_users if name in USER_FIELDS else n_items)
        for name, (vocab, _, _) in {**USER_FIELDS, **ITEM_FIELDS}.items()
        if name not in ("user_id", "item_id")
    }
    activity = rng.lognormal(0.0, 0.7, size=n_users)
    price = (1.0 + attributes["item_price_level"]) * np.exp(rng.normal(0.0, 0.3, size=n_items))
    rating = rng.normal(0.0, 1.0, size=n_items)
    dense = {
        "user_activity": _standardized(np.log(activity), user_p),
        "item_price": _standardized(np.log(price), item_p),
        "item_rating": _standardized(rating, item_p),
    }
    click_effect, cvr_effect = {}, {}
    for name, (vocab, scale, corr) in SPARSE_FIELDS.items():
        corr = corr if correlation is None else correlation
        a = rng.normal(0.0, scale, size=vocab)
        click_effect[name] = a
        cvr_effect[name] = corr * a + np.sqrt(1.0 - corr**2) * rng.normal(0.0, scale, size=vocab)
    p_user = rng.normal(size=(n_users, LATENT_DIM))
    q_item = rng.normal(size=(n_items, LATENT_DIM))
    z = rng.normal(size=q_item.shape)
    rho = LATENT_CORRELATION if correlation is None else correlation
    r_item = rho * q_item + np.sqrt(1 - rho**2) * z
    return Tables(
        np.cumsum(user_p), np.cumsum(item_p), attributes, dense, click_effect, cvr_effect,
        p_user, q_item, r_item,
    )  # fmt: skip


def _draw_ids(cdf: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
    return np.minimum(np.searchsorted(cdf / cdf[-1], rng.random(n), side="right"), len(cdf) - 1)


def chunk_features(tables: Tables, seed: int, k: int, n: int):
    """Chunk k's n rows: feature columns, both logits without offsets, and its row stream."""
    rng = np.random.default_rng([seed, 1, k])
    users, items = _draw_ids(tables.user_cdf, rng, n), _draw_ids(tables.item_cdf, rng, n)
    cols: dict[str, np.ndarray] = {"user_id": users, "item_id": items}
    for name, values in tables.attributes.items():
        cols[name] = values[users if name in USER_FIELDS else items]
    for name, (vocab, _, _) in CONTEXT_FIELDS.items():
        cols[name] = rng.integers(0, vocab, size=n)
    cols["user_activity"] = tables.dense["user_activity"][users]
    cols["item_price"] = tables.dense["item_price"][items]
    cols["item_rating"] = tables.dense["item_rating"][items]
    click_logit = sum(tables.click_effect[f][cols[f]] for f in SPARSE_FIELDS)
    cvr_logit = sum(tables.cvr_effect[f][cols[f]] for f in SPARSE_FIELDS)
    scale = LATENT_SCALE / np.sqrt(LATENT_DIM)
    p_u = tables.p_user[users]
    click_logit = click_logit + scale * np.einsum("nk,nk->n", p_u, tables.q_item[items])
    cvr_logit = cvr_logit + scale * np.einsum("nk,nk->n", p_u, tables.r_item[items])
    click_logit += sum(c * cols[name] for name, c in CLICK_TERMS.items())
    cvr_logit += sum(c * cols[name] for name, c in CVR_TERMS.items())
    return cols, click_logit, cvr_logit, rng


def chunk_sizes(num_rows: int) -> list[int]:
    full, rest = divmod(num_rows, CHUNK_ROWS)
    return [CHUNK_ROWS] * full + ([rest] if rest else [])


@dataclass(frozen=True)
class Offsets:
    click: float
    cvr: float
    action: float | None = None  # b_action, when the D-action stage is on


def calibrate(tables: Tables, seed: int, num_rows: int, setting: Setting = Setting()) -> Offsets:
    """The offsets b_click, b_cvr (and b_action) from the logits of the first CALIBRATION_ROWS rows."""
    clicks, cvrs = [], []
    for k, n in enumerate(chunk_sizes(min(num_rows, CALIBRATION_ROWS))):
        _, click_logit, cvr_logit, _ = chunk_features(tables, seed, k, n)
        clicks.append(click_logit)
        cvrs.append(cvr_logit)
    click_logit, cvr_logit = np.concatenate(clicks), np.concatenate(cvrs)
    b_click = _bisect_offset(lambda b: _sigmoid(click_logit + b).mean(), TARGET_CTR)
    p_click = _sigmoid(click_logit + b_click)
    b_cvr = _bisect_offset(
        lambda b: (p_click * _sigmoid(cvr_logit + b)).sum() / p_click.sum(), setting.cvr_rate
    )
    if setting.action_rate is None:
        return Offsets(b_click, b_cvr)
    p_cvr = _sigmoid(cvr_logit + b_cvr)
    b_action = _bisect_offset(
        lambda b: (p_click * action_probability(cvr_logit, p_cvr, b)[0]).sum() / p_click.sum(),
        setting.action_rate,
    )
    return Offsets(b_click, b_cvr, b_action)


def action_probability(
    cvr_logit: np.ndarray, p_cvr: np.ndarray, b_action: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(p(action | click), p(action | click, buy), p(action | click, no buy)) per row."""
    base = b_action + ACTION_CVR_SHARE * cvr_logit
    if_buy, if_not = _sigmoid(base + ACTION_BUY_LIFT), _sigmoid(base)
    return p_cvr * if_buy + (1 - p_cvr) * if_not, if_buy, if_not


def iter_chunks(
    num_rows: int, seed: int, setting: Setting = Setting()
) -> Iterator[dict[str, np.ndarray]]:
    """The dataset's columns (features, labels, true probabilities), CHUNK_ROWS rows at a time."""
    tables = draw_tables(seed, setting.effect_correlation)
    offsets = calibrate(tables, seed, num_rows, setting)
    for k, n in enumerate(chunk_sizes(num_rows)):
        cols, click_logit, cvr_logit, rng = chunk_features(tables, seed, k, n)
        p_click, p_cvr = _sigmoid(click_logit + offsets.click), _sigmoid(cvr_logit + offsets.cvr)
        click = (rng.random(n) < p_click).astype(np.int8)
        conversion_if_clicked = (rng.random(n) < p_cvr).astype(np.int8)
        out = {name: cols[name].astype(np.int32) for name in SPARSE_FIELDS}
        out |= {name: cols[name] for name in DENSE_FIELDS}
        out["click"] = click
        out["conversion"] = click * conversion_if_clicked
        out["conversion_if_clicked"] = conversion_if_clicked
        if offsets.action is not None:
            p_action, if_buy, if_not = action_probability(cvr_logit, p_cvr, offsets.action)
            # its own stream: every other column equals the dataset without the stage
            u = np.random.default_rng([seed, 3, k]).random(n)
            acted = u < np.where(conversion_if_clicked == 1, if_buy, if_not)
            out["action"] = click * acted.astype(np.int8)
            out["p_action"] = p_action.astype(np.float32)
        out["p_click"] = p_click.astype(np.float32)
        out["p_cvr"] = p_cvr.astype(np.float32)
        out["p_ctcvr"] = (p_click * p_cvr).astype(np.float32)
        yield out


def generate(num_rows: int, seed: int, setting: Setting = Setting()) -> dict[str, np.ndarray]:
    """All columns of the dataset in memory (tests, small sizes); the writer streams chunks."""
    chunks = list(iter_chunks(num_rows, seed, setting))
    return {name: np.concatenate([c[name] for c in chunks]) for name in chunks[0]}


def dataset_spec(num_rows: int, seed: int, setting: Setting = Setting()) -> DatasetSpec:
    features = [FeatureSpec(name, "sparse", vocab) for name, (vocab, _, _) in SPARSE_FIELDS.items()]
    features += [FeatureSpec(name, "dense") for name in DENSE_FIELDS]
    acts = setting.action_rate is not None
    truth = ["p_click", "p_cvr", "p_ctcvr", *(["p_action"] if acts else [])]
    return DatasetSpec(
        name="synthetic_ccp",
        features=tuple(features),
        labels=("click", "conversion", "conversion_if_clicked", *(["action"] if acts else [])),
        tasks=(
            TaskSpec("ctr", "click", "binary"),
            TaskSpec("cvr", "conversion", "binary", where="click"),
        ),
        funnel=FunnelSpec(
            "click", "conversion", "conversion_if_clicked", action="action" if acts else None
        ),
        splits={s: f"{s}.parquet" for s in SPLIT_FRACTIONS},
        info={
            # the generator's name as first recorded (part of a checkpoint's data fingerprint,
            # training/binding.py): kept when this module was renamed from data/synthetic_ccp.py
            "generator": "mtlrec.data.synthetic_ccp",
            "generator_version": GENERATOR_VERSION,
            "num_rows": num_rows,
            "generator_seed": seed,
            "truth_columns": truth,
            **setting.changed(),  # only options off their defaults: the default spec is as before
        },
    )


def write_prepared(directory: Path, num_rows: int, seed: int, setting: Setting = Setting()) -> None:
    """Generate chunk by chunk into the spec's split files (exact 70/15/15 sizes), then spec.json."""
    from mtlrec.data.generated import SequentialSplit, SplitWriter, split_sizes  # pyarrow

    spec = dataset_spec(num_rows, seed, setting)
    splitter = SequentialSplit(
        split_sizes(num_rows, SPLIT_FRACTIONS), np.random.default_rng([seed, 2])
    )
    with SplitWriter(directory, spec) as writer:
        for columns in iter_chunks(num_rows, seed, setting):
            writer.write(columns, splitter.codes(len(columns["click"])))
    spec.save(directory)
