"""`mtlrec tune SEARCH [--study-dir DIR] [--trials N] [--jobs N] [train overrides...]`

    mtlrec tune mmoe dataset.num_rows=50000 trainer.epochs=5         # conf/search/mmoe.yaml
    mtlrec tune my_search.yaml --trials 40 --jobs 2                   # your own search file
    mtlrec tune mmoe --study-dir outputs/tune/mmoe/2026-12-01_10-00   # resume after Ctrl-C
    mtlrec tune mmoe --storage postgresql://user@db/optuna             # one study, many machines
    mtlrec tune mmoe --metrics val/ctr_auc,val/cvr_auc                 # multi-objective (Pareto)

The results table and the best line go to stdout; progress and messages to stderr. The arguments
are declared in mtlrec/commands/tune.py, which calls `tune(args)`.

Needs `pip install "mtlrec[tune]"` (optuna >= 4).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
from pathlib import Path
from typing import Any

from mtlrec.errors import MtlrecError


def apply_arguments(cfg: Any, args: argparse.Namespace) -> None:
    """--trials, --jobs, --metrics and --directions over the search file's values."""
    if args.trials is not None:
        cfg.trials = args.trials
    if args.jobs is not None:
        cfg.jobs = args.jobs
    if args.metrics:
        cfg.objectives = [m.strip() for m in args.metrics.split(",") if m.strip()]
        cfg.metric = cfg.objectives[0]  # the runs' trainer.monitor (their model selection)
    if args.directions:
        cfg.objective_directions = [d.strip() for d in args.directions.split(",") if d.strip()]
    cfg.validate()


def tune(args: argparse.Namespace) -> int:
    """`mtlrec tune` with its parsed arguments (declared in mtlrec/commands/tune.py)."""
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise MtlrecError('mtlrec tune needs optuna >= 4: pip install "mtlrec[tune]"') from None
    from rich.console import Console

    from mtlrec.tuning import study as st
    from mtlrec.tuning.space import load_search

    cfg = load_search(args.search)
    apply_arguments(cfg, args)
    root = args.study_dir or Path("outputs/tune") / cfg.name / dt.datetime.now().strftime(
        "%Y-%m-%d_%H-%M-%S"
    )
    paths = st.StudyPaths(root.expanduser().absolute())
    console, out = Console(stderr=True), Console()  # messages on stderr, results on stdout
    handle = st.claim(paths)
    try:
        st.record_search(paths, cfg, list(args.overrides))
        study = st.open_study(cfg, paths, args.storage)
        # Under a shared storage a RUNNING trial may be another machine's: left alone.
        retried = [] if args.storage else st.retry_interrupted(study)
        if retried:
            console.print(
                f"resuming {paths.root}: trial(s) {retried} were interrupted; asked again"
            )
        runner = st.StudyRunner(study, cfg, paths, list(args.overrides))
        previous = st.raise_on_sigterm()
        try:
            runner.run()
        except (KeyboardInterrupt, st.StudyInterrupted) as e:
            code = e.exit_code if isinstance(e, st.StudyInterrupted) else 130
            storage = f" --storage {args.storage}" if args.storage else ""
            console.print(
                f"mtlrec tune: interrupted; resume with: mtlrec tune {args.search} "
                f"--study-dir {paths.root}{storage}"
            )
            return code
        finally:
            import signal

            signal.signal(signal.SIGTERM, previous)
        if runner.fatal:
            raise MtlrecError(f"{runner.fatal} (log: {paths.root / 'logs'})")
        summary = write_summary(study, cfg, paths)
        print_table(study, cfg, out)
        if not args.no_plots:
            write_plots(study, paths, console)
        out.print(best_line(summary, cfg, paths), soft_wrap=True)
        return 0
    finally:
        handle.close()


def write_summary(study: Any, cfg: Any, paths: Any) -> dict[str, Any]:
    trials = study.get_trials(deepcopy=False)
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    multi = len(cfg.metrics) > 1
    best = study.best_trial if complete and not multi else None
    summary = {
        "search": cfg.name,
        "metric": cfg.metric,
        "direction": cfg.direction,
        "metrics": cfg.metrics,
        "directions": cfg.directions,
        "trials": counts,
        "best_trial": None if best is None else best.number,
        "best_value": None if best is None else best.value,
        "best_params": None if best is None else best.params,
        "best_run_dir": None if best is None else best.user_attrs.get("run_dir"),
    }
    if multi:  # no single best: the trials no other trial beats on every metric
        summary["pareto_front"] = [
            {"trial": t.number, "values": t.values, "params": t.params,
             "run_dir": t.user_attrs.get("run_dir")}
            for t in (study.best_trials if complete else [])
        ]  # fmt: skip
    tmp = paths.summary.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=2))
    tmp.replace(paths.summary)
    return summary


def best_line(summary: dict[str, Any], cfg: Any, paths: Any) -> str:
    compare = f"compare: mtlrec compare {paths.trials}"
    if "pareto_front" in summary:
        front = ", ".join(str(p["trial"]) for p in summary["pareto_front"]) or "none"
        return f"pareto front ({', '.join(cfg.metrics)}): trial(s) {front}; {compare}"
    value = summary["best_value"]
    shown = "none" if value is None else f"{value:.5f}"
    return (
        f"best: trial {summary['best_trial']} {cfg.metric}={shown} "
        f"({summary['best_run_dir']}); {compare}"
    )


def short(override: str) -> str:
    """`trainer.lr=0.0002416` for `trainer.lr=0.00024156772025296256`: 4 significant digits for
    the table (the trial's own overrides keep every digit)."""
    key, _, value = override.partition("=")
    try:
        number = float(value)
    except ValueError:
        return override
    if value.lstrip("-").isdigit() or not math.isfinite(number):
        return override  # integers and inf stay as they are
    return f"{key}={number:.4g}"


def print_table(study: Any, cfg: Any, console: Any) -> None:
    from rich.table import Table

    title = " / ".join(f"{m} ({d})" for m, d in zip(cfg.metrics, cfg.directions, strict=True))
    table = Table(title=f"study {cfg.name}: {title}")
    for name in ("trial", "state", *cfg.metrics, "epochs", "parameters"):
        table.add_column(name, justify="right" if name in ("trial", "epochs") else "left")
    for t in study.get_trials(deepcopy=False):
        values = t.values if t.values is not None else [None] * len(cfg.metrics)
        shown = ["" if v is None or not math.isfinite(v) else f"{v:.5f}" for v in values]
        params = " ".join(short(o) for o in t.user_attrs.get("suggested", []))
        epochs = str(len(t.intermediate_values) or t.user_attrs.get("epochs", 0))
        table.add_row(str(t.number), t.state.name.lower(), *shown, epochs, params)
    console.print(table)


def write_plots(study: Any, paths: Any, console: Any) -> None:
    """Optuna's optimization history and parameter importances as PNGs (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import optuna.visualization.matplotlib as ovm
    except ImportError:
        console.print('plots skipped: pip install "mtlrec[plot]" for matplotlib')
        return
    import warnings

    paths.plots.mkdir(parents=True, exist_ok=True)
    plots: dict[str, Any] = {
        "history": ovm.plot_optimization_history,
        "importance": ovm.plot_param_importances,
    }
    for name, plot in plots.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = plot(study)
            ax.figure.savefig(paths.plots / f"{name}.png", dpi=100, bbox_inches="tight")
            plt.close(ax.figure)
        except (ValueError, RuntimeError) as e:  # e.g. importances need 2+ completed trials
            console.print(f"plot {name} skipped: {e}")
