"""Calibration of binary predictions: PCOC, ECE over equal-mass bins, reliability bins, temperatures.

Ranking scores multiply the task probabilities (e.g. pCTR x pCVR x bid), so their level matters,
not only their order (AUC):

- `pcoc` = sum(p) / sum(y): predicted over observed positives; 1 = right on average.
- `ece` = sum_b (n_b / n) |mean(p_b) - mean(y_b)| over `bins` equal-mass bins of the predictions
  sorted by value (each bin holds n / bins rows, +-1): every bin is populated, unlike equal-width
  bins on CTR-like data where nearly every prediction falls into the first bin.
- `reliability_bins`: the (mean prediction, positive rate, rows) of each of those bins: what
  `mtlrec compare --plot` draws as a reliability diagram (run dir file reliability.json).
- `fit_temperature`: post-hoc temperature scaling (Guo et al., ICML 2017, "On Calibration of
  Modern Neural Networks"): p = sigmoid(z / T) with one T > 0 per binary output, fitted on the
  validation split by minimizing its log loss (torch.optim.LBFGS on log T). `mtlrec calibrate RUN`
  writes them; evaluate/predict/export divide the output's logit by T when present.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

ECE_BINS = 15
RELIABILITY_FILE = "reliability.json"  # run dir: the test split's bins at the best epoch
CALIBRATION_FILE = "calibration.json"  # run dir: `mtlrec calibrate`'s temperatures


def pcoc(y: np.ndarray, p: np.ndarray) -> float:
    positives = float(y.sum())
    return float(p.sum()) / positives if positives > 0 else math.nan


def reliability_bins(y: np.ndarray, p: np.ndarray, bins: int = ECE_BINS) -> dict[str, list[float]]:
    """Per equal-mass bin: mean prediction, positive rate, rows (fewer bins when rows < bins)."""
    order = np.argsort(p, kind="stable")
    groups = [g for g in np.array_split(order, min(bins, max(len(order), 1))) if g.size]
    return {
        "mean_prediction": [float(p[g].mean()) for g in groups],
        "positive_rate": [float(y[g].mean()) for g in groups],
        "rows": [int(g.size) for g in groups],
    }


def ece(y: np.ndarray, p: np.ndarray, bins: int = ECE_BINS) -> float:
    if y.size == 0:
        return math.nan
    b = reliability_bins(y, p, bins)
    gaps = np.abs(np.array(b["mean_prediction"]) - np.array(b["positive_rate"]))
    return float((gaps * np.array(b["rows"])).sum() / y.size)


def logits_of(p: np.ndarray) -> np.ndarray:
    q = np.clip(p.astype(np.float64), 1e-12, 1 - 1e-12)
    return np.log(q) - np.log1p(-q)


def fit_temperature(y: np.ndarray, logits: np.ndarray) -> float:
    """The T > 0 minimizing the mean BCE of sigmoid(logits / T) against y."""
    import torch  # here: `mtlrec compare` reads this module's file names without torch

    z = torch.as_tensor(logits, dtype=torch.float64)
    target = torch.as_tensor(y, dtype=torch.float64)
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:  # noqa: F821 (torch imported above)
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z / log_t.exp(), target)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().exp())


def apply_temperatures(model: Any, temperatures: dict[str, float]) -> None:
    """From now on the model's named outputs come out divided by their temperature (a forward
    hook: evaluation, prediction and traced exports all go through it)."""

    def divide(module: Any, inputs: Any, outputs: dict) -> dict:
        return {k: v / temperatures[k] if k in temperatures else v for k, v in outputs.items()}

    model.register_forward_hook(divide)
