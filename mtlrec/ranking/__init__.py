"""Ranking with several objectives: fuse a run's task scores into one ranking score.

forms.py     the fusion forms (product in log space, sum, logit_sum) as one torch module
targets.py   what a fusion is judged by: utility of the observed labels, AUC / GAUC / NDCG@k,
             or one task's AUC under a constraint on another's
scores.py    a run's val/test predictions and labels, read from its checkpoint
search.py    the weight search (Optuna TPE, seeded, or a grid)
record.py    fusion/<name>.json: written once, read back by predict and export
plots.py     metric vs trials, the val trade-off of 2-3 tasks
fuse.py      one run's search end to end; several runs compared at their best fusion
"""
