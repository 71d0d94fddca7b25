"""Probabilities as logits and logs, without underflow or NaN gradients.

    log1mexp(x)        = log(1 - e^x)                     x <= 0
    product_logit(a,b) = logit(sigmoid(a) * sigmoid(b))   any a, b

`log1mexp` uses the two classic formulas, each where it is accurate (Maechler 2012, "Accurately
computing log(1 - exp(-|a|))"): log(-expm1(x)) for x > -ln 2 and log1p(-exp(x)) below. Both
branches of a torch.where are evaluated and differentiated, so each one gets an input masked into
its own valid range: the unused branch computes a harmless finite value and its gradient is 0,
never NaN or inf. No clamp changes the result: log1mexp(0) = -inf is the true value.

`product_logit` never subtracts from 1 at all. With p = s(a) s(b) (s = sigmoid):

    1 - p = s(-a) + s(a) s(-b)          (not clicked, or clicked and not converted)
    logit(p) = log s(a) + log s(b) - logaddexp(log s(-a), log s(a) + log s(-b))

Every term is a log-sigmoid, finite for every finite logit, so the logit and its gradients are
finite and accurate from -100 to 100 and beyond (a = b = 30 gives 29.3, not a saturated 27.6).
A chain p(s_k) = p(s_{k-1}) c_k applies it step by step on logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LN_HALF = -0.6931471805599453  # log(1/2): where the two log1mexp formulas trade accuracy


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x <= 0, accurate on both sides of -ln 2, NaN-free gradients."""
    near_zero = x > LN_HALF
    # each branch only ever sees inputs where its formula is finite
    x_near = torch.where(near_zero, x, torch.full_like(x, LN_HALF))
    x_far = torch.where(near_zero, torch.full_like(x, LN_HALF), x)
    return torch.where(near_zero, torch.log(-torch.expm1(x_near)), torch.log1p(-torch.exp(x_far)))


def product_logit(logit_a: torch.Tensor, logit_b: torch.Tensor) -> torch.Tensor:
    """logit(sigmoid(a) * sigmoid(b)), computed in log space without underflow."""
    log_a, log_b = F.logsigmoid(logit_a), F.logsigmoid(logit_b)
    log_not_p = torch.logaddexp(F.logsigmoid(-logit_a), log_a + F.logsigmoid(-logit_b))
    return log_a + log_b - log_not_p
