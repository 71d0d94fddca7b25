"""Hyper-parameter search: `mtlrec tune` (Optuna ask/tell; every trial an ordinary run dir)."""
