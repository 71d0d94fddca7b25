"""`mtlrec tune SEARCH [--study-dir DIR] [--trials N] [--jobs N] [train overrides...]`

    mtlrec tune mmoe dataset.num_rows=50000 trainer.epochs=5         # conf/search/mmoe.yaml
    mtlrec tune my_search.yaml --trials 40 --jobs 2                   # your own search file
    mtlrec tune mmoe --study-dir outputs/tune/mmoe/2026-12-01_10-00   # resume after Ctrl-C

Needs `pip install "mtlrec[tune]"` (optuna >= 4).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import sys
from pathlib import Path
from typing import Any

from mtlrec.errors import MtlrecError


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(
        prog="mtlrec tune", description=__doc__.splitlines()[0]
    )
    parser.add_argument("search", help="a search in conf/search/ (e.g. mmoe) or a yaml file")
    parser.add_argument("overrides", nargs="*", help="`mtlrec train` overrides for every trial")
    parser.add_argument("--study-dir", type=Path, help="the study's dir; an existing one resumes")
    parser.add_argument("--trials", type=int, help="finished trials wanted (default: the search's)")
    parser.add_argument("--jobs", type=int, help="trials run at a time (each gets its core share)")
    parser.add_argument("--no-plots", action="store_true", help="skip Optuna's PNG plots")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_intermixed_args(argv)
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise MtlrecError('mtlrec tune needs optuna >= 4: pip install "mtlrec[tune]"') from None
    from rich.console import Console

    from mtlrec.tuning import study as st
    from mtlrec.tuning.space import load_search

    cfg = load_search(args.search)
    if args.trials is not None:
        cfg.trials = args.trials
    if args.jobs is not None:
        cfg.jobs = args.jobs
    cfg.validate()
    root = args.study_dir or Path("outputs/tune") / cfg.name / dt.datetime.now().strftime(
        "%Y-%m-%d_%H-%M-%S"
    )
    paths = st.StudyPaths(root.expanduser().absolute())
    console = Console(stderr=True)
    handle = st.claim(paths)
    try:
        st.record_search(paths, cfg, list(args.overrides))
        study = st.open_study(cfg, paths)
        retried = st.retry_interrupted(study)
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
            console.print(
                f"mtlrec tune: interrupted; resume with: mtlrec tune {args.search} "
                f"--study-dir {paths.root}"
            )
            return code
        finally:
            import signal

            signal.signal(signal.SIGTERM, previous)
        if runner.fatal:
            raise MtlrecError(f"{runner.fatal} (log: {paths.root / 'logs'})")
        summary = write_summary(study, cfg, paths)
        print_table(study, cfg, console)
        if not args.no_plots:
            write_plots(study, paths, console)
        console.print(
            f"best: trial {summary['best_trial']} {cfg.metric}={summary['best_value']} "
            f"({summary['best_run_dir']}); compare: mtlrec compare {paths.trials}"
        )
        return 0
    finally:
        handle.close()


def write_summary(study: Any, cfg: Any, paths: Any) -> dict[str, Any]:
    trials = study.get_trials(deepcopy=False)
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    best = study.best_trial if complete else None
    summary = {
        "search": cfg.name,
        "metric": cfg.metric,
        "direction": cfg.direction,
        "trials": counts,
        "best_trial": None if best is None else best.number,
        "best_value": None if best is None else best.value,
        "best_params": None if best is None else best.params,
        "best_run_dir": None if best is None else best.user_attrs.get("run_dir"),
    }
    tmp = paths.summary.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=2))
    tmp.replace(paths.summary)
    return summary


def print_table(study: Any, cfg: Any, console: Any) -> None:
    from rich.table import Table

    table = Table(title=f"study {cfg.name}: {cfg.metric} ({cfg.direction})")
    for name in ("trial", "state", cfg.metric, "epochs", "parameters"):
        table.add_column(name, justify="right" if name in ("trial", "epochs") else "left")
    for t in study.get_trials(deepcopy=False):
        value = "" if t.value is None or not math.isfinite(t.value) else f"{t.value:.5f}"
        params = " ".join(t.user_attrs.get("suggested", []))
        epochs = str(len(t.intermediate_values))
        table.add_row(str(t.number), t.state.name.lower(), value, epochs, params)
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


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
