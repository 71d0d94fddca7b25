"""`mtlrec fuse RUN_DIR [RUN_DIR...]`: search fusion weights of the task scores on val, report test.

    mtlrec fuse RUN --utility click=1,conversion=10              # utility AUC, Optuna TPE, 100 trials
    mtlrec fuse RUN --form product,sum,logit_sum --trials 200 --seed 1
    mtlrec fuse RUN --metric gauc --group-by user_id             # or --metric ndcg --k 10
    mtlrec fuse RUN --metric task_auc --task ctcvr --constraint ctr=0.99
    mtlrec fuse SWEEP_DIR --search grid --grid-steps 11          # every run, compared at its best

Writes RUN/fusion/<name>.json (form, weights, val and test values, each task's own score as a
baseline, the trials, this command) and the plots next to it; `mtlrec predict RUN --fusion` and
`mtlrec export RUN --fusion` apply it. docs/ranking.md explains the targets.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from mtlrec.commands import OK

SUMMARY = "search fusion weights of a run's task scores on val, report on test (RUN_DIR...)"
FORWARDS = False
FORMS = ("product", "sum", "logit_sum")  # mtlrec.ranking.forms.FORMS, spelled out: no torch here
METRICS = ("auc", "gauc", "ndcg", "task_auc")


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run dirs or dirs holding them")
    p.add_argument(
        "--form", default="product", help=f"fusion form(s), comma-separated: {', '.join(FORMS)}"
    )
    p.add_argument("--metric", choices=METRICS, default="auc", help="the target on val")
    p.add_argument(
        "--utility", help="LABEL=WEIGHT,... of the observed labels (default: 1 per binary task)"
    )
    p.add_argument("--group-by", help="a single-id field: groups of gauc and ndcg (e.g. user_id)")
    p.add_argument("--k", type=int, default=10, help="cut-off of --metric ndcg (10)")
    p.add_argument("--task", help="--metric task_auc's task, e.g. ctcvr")
    p.add_argument("--constraint", help="TASK=RATIO: TASK's AUC >= RATIO x its best single AUC")
    p.add_argument("--tasks", help="model outputs to fuse, comma-separated (default: the tasks')")
    p.add_argument("--search", choices=("optuna", "grid"), default="optuna")
    p.add_argument("--trials", type=int, default=100, help="Optuna trials per form (100)")
    p.add_argument("--seed", type=int, default=0, help="the TPE sampler's seed (0)")
    p.add_argument("--bounds", default="0,1", help="LOW,HIGH of every weight (0,1)")
    p.add_argument("--grid-steps", type=int, default=11, help="values per weight of --search grid")
    p.add_argument("--checkpoint", default="best.pt", help="file in RUN_DIR/checkpoints (best.pt)")
    p.add_argument("--name", default="fusion", help="record name: RUN/fusion/<name>.json")
    p.add_argument("--no-plot", action="store_true", help="write no plots")
    p.set_defaults(parser=p)


def _options(args: argparse.Namespace):
    from mtlrec.ranking.fuse import FuseOptions, TargetOptions
    from mtlrec.ranking.search import SearchConfig

    forms = tuple(f.strip() for f in args.form.split(",") if f.strip())
    bad = [f for f in forms if f not in FORMS]
    if bad or not forms:
        args.parser.error(f"--form {args.form}: use one or more of {', '.join(FORMS)}")
    low, sep, high = args.bounds.partition(",")
    try:
        bounds = (float(low), float(high))
    except ValueError:
        bounds = (1.0, 0.0)
    if not sep or not 0 <= bounds[0] < bounds[1] < float("inf"):
        args.parser.error(f"--bounds {args.bounds}: expected LOW,HIGH with 0 <= LOW < HIGH")
    if args.trials < 1 or args.grid_steps < 2:
        args.parser.error("--trials must be >= 1 and --grid-steps >= 2")
    search = SearchConfig(
        forms[0], args.search, args.trials, args.seed, bounds[0], bounds[1], args.grid_steps
    )
    target = TargetOptions(
        args.metric, args.utility, args.group_by, args.k, args.task, args.constraint
    )
    tasks = [t.strip() for t in args.tasks.split(",")] if args.tasks else None
    command = shlex.join(["mtlrec", "fuse", *sys.argv[2:]]) if sys.argv[1:2] == ["fuse"] else ""
    return FuseOptions(
        forms, search, target, args.checkpoint, tasks, args.name, not args.no_plot, command
    )


def run(args: argparse.Namespace) -> int:
    from mtlrec.ranking.fuse import fuse_runs
    from mtlrec.ranking.table import fusion_table

    options = _options(args)
    records = fuse_runs(args.run_dirs, options)
    print(fusion_table(records), end="")
    for record in records:
        print(f"wrote {record['path']}", file=sys.stderr)
        for plot in record["plots"]:
            print(f"wrote {plot}", file=sys.stderr)
    return OK
