"""`mtlrec compare PATH [PATH...]`: one table of runs, read from their run dirs on disk only.

    mtlrec compare outputs/multirun/2026-11-28/12-00-00-000000          # a sweep dir
    mtlrec compare outputs/2026-11-28 outputs/multirun                   # single runs and sweeps, mixed
    mtlrec compare SWEEP --metric test/cvr_auc --sort test/cvr_auc --filter model=mmoe
    mtlrec compare SWEEP --group-by-seed --format markdown --output results.md
    mtlrec compare SWEEP --layout long                                   # one block per run
    mtlrec compare SWEEP --plot plots/                                    # PNGs (extra: plot)

A run dir is a directory holding `metrics.json` or `.hydra/config.yaml` (runs/records.py reads
them). For each run the table has one row: the config values that differ between the compared
runs (report/keys.py), the chosen metrics (default: the test metrics of the monitored family),
best epoch, epochs run, wall time, training samples/s and status (report/table.py). Failed,
interrupted and still-running runs keep their row with their status; their metrics are empty.
`--sort` puts the best first for metrics, by `mtlrec.metric_registry.direction`.

On a terminal the table fits its width (`COLUMNS` when set): wide when it fits, else one block
per run (`--layout long`); colours only on a terminal. csv/json hold the full-precision numbers.
The arguments are declared in mtlrec/commands/compare.py, which calls `compare(args)`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from mtlrec.errors import MtlrecError
from mtlrec.report.keys import default_metrics, differing_keys, filter_runs, short_names
from mtlrec.report.render import render
from mtlrec.report.table import Table, build_table, mean_std, sort_rows
from mtlrec.runs.records import Run, find_run_dirs, load_runs, read_run

# Older name of filter_runs.
parse_filters = filter_runs


def terminal_width() -> int | None:
    """COLUMNS when set, the terminal's width on a terminal, else None (a pipe: no limit)."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    if sys.stdout.isatty():
        return shutil.get_terminal_size((100, 40)).columns
    return None


def wants_color() -> bool:
    """Colours on a terminal only, and never with NO_COLOR set (https://no-color.org)."""
    return (
        sys.stdout.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"
    )


def _select(args: argparse.Namespace) -> tuple[list[Run], Table]:
    runs = load_runs(args.paths)
    runs = filter_runs(args.filter, runs, short_names(differing_keys(runs)))
    if not runs:
        raise MtlrecError(f"--filter {' '.join(args.filter)}: no run matches")
    metrics = args.metric
    in_runs = {m for r in runs for m in r.metric_names}
    # sorting by a metric shows it (any metric of the runs)
    if args.sort in in_runs and not metrics:
        defaults = default_metrics(runs)
        metrics = defaults if args.sort in defaults else [*defaults, args.sort]
    if args.baseline and args.group_by_seed is False:
        raise MtlrecError(
            "--baseline pairs each configuration's seeds with the baseline's: drop --no-group"
        )
    table = build_table(runs, metrics, True if args.baseline else args.group_by_seed)
    if args.baseline:
        from mtlrec.ranking.gain import add_gain_columns

        add_gain_columns(table, runs, args.baseline)
    missing = [m for m in (args.metric or []) if not any(m in r.metric_names for r in runs)]
    if missing and any(r.metric_names for r in runs):
        known = sorted({k for r in runs for k in r.metric_names})
        raise MtlrecError(
            f"--metric {missing[0]}: no compared run has this metric; metrics: {', '.join(known)}"
        )
    sort_rows(table, args.sort, args.reverse)
    return runs, table


def _write_plots(runs: list[Run], out: str, metrics: list[str]) -> None:
    from mtlrec.report.plots import write_plots

    written = write_plots(runs, Path(out), metrics)
    for path in written:
        print(f"wrote {path}", file=sys.stderr)
    if not written:
        print("no plots written: no compared run has a history.csv yet", file=sys.stderr)


def _check_outputs(args: argparse.Namespace) -> None:
    """Before any work: --output and --plot never land in a run dir, a dataset or an export,
    and --output never replaces a file without --overwrite (mtlrec.outputs)."""
    from mtlrec import outputs

    if args.output:
        inputs = {f"compared {p}": p for p in args.paths}
        outputs.check_output(args.output, "--output", inputs, args.overwrite, what="table")
    if args.plot:
        outputs.check_output_dir(args.plot, "--plot", args.paths, what="plots")
        from mtlrec.report.plots import check_plot_dir

        check_plot_dir(Path(args.plot).expanduser(), args.overwrite)


def compare(args: argparse.Namespace) -> int:
    """`mtlrec compare` with its parsed arguments (declared in mtlrec/commands/compare.py)."""
    if args.plot:
        from mtlrec.report.plots import require_matplotlib

        require_matplotlib()  # fail before the work, in one line
    _check_outputs(args)
    runs, table = _select(args)
    if args.output:
        from mtlrec.runs.atomic import atomic_write_text

        atomic_write_text(Path(args.output), render(table, args.format, layout=args.layout))
        print(f"wrote {args.output} ({len(table.rows)} rows)", file=sys.stderr)
    else:
        text = render(
            table, args.format, width=terminal_width(), layout=args.layout, color=wants_color()
        )
        sys.stdout.write(text)
    if args.plot:
        _write_plots(runs, args.plot, table.metric_columns)
        if args.baseline:
            from mtlrec.ranking.seesaw import write_seesaw

            seesaw = write_seesaw(table, Path(args.plot))
            print(
                f"wrote {seesaw}" if seesaw else "no seesaw: fewer than two task metrics",
                file=sys.stderr,
            )
    return 0


__all__ = [
    "Run",
    "Table",
    "build_table",
    "default_metrics",
    "differing_keys",
    "find_run_dirs",
    "compare",
    "load_runs",
    "mean_std",
    "read_run",
    "render",
    "short_names",
    "sort_rows",
]
