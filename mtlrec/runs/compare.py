"""`mtlrec compare PATH [PATH...]`: one table of runs, read from their run dirs on disk only.

    mtlrec compare outputs/multirun/2026-11-28/12-00-00-000000          # a sweep dir
    mtlrec compare outputs/2026-11-28 outputs/multirun                   # single runs and sweeps, mixed
    mtlrec compare SWEEP --metric test/cvr_auc --sort test/cvr_auc --filter model=mmoe
    mtlrec compare SWEEP --group-by-seed --format markdown --output results.md
    mtlrec compare SWEEP --plot plots/                                    # PNGs (extra: plot)

A run dir is a directory holding `metrics.json` or `.hydra/config.yaml`. For each run the table has
one row: the config values that differ between the compared runs (short names: `num_experts` for
`model.num_experts` when unambiguous), the chosen metrics (default: the test metrics of the
monitored family, e.g. every `test/*_auc*` when the monitor is `val/mean_auc`), best epoch, epochs
run, wall time, training samples/s and status. Failed, interrupted and still-running runs keep
their row with their status; their metrics are empty.

Seed groups (`--group-by-seed`, or automatically when the seed is the only config value that
differs): runs that differ only in `seed` / `data_order_seed` form one row with, per metric, the
mean and the sample standard deviation s = sqrt(sum (x - mean)^2 / (n - 1)) over the completed runs
of the group (s = 0 for n = 1), and n.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import shutil
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mtlrec.errors import MtlrecError

METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.csv"
HYDRA_CONFIG = Path(".hydra") / "config.yaml"
HYDRA_OVERRIDES = Path(".hydra") / "overrides.yaml"
FORMATS = ("table", "csv", "markdown", "json")
SEED_KEYS = ("seed", "data_order_seed")
# Config keys that never explain a difference in results: where files live, how progress shows.
IGNORED_KEYS = ("data_dir", "dataset.path", "trainer.progress", "resume")
# Dirs inside a run dir that are never run dirs themselves.
SKIP_DIRS = {"checkpoints", "tensorboard", ".hydra", ".submitit", "mlruns", "__pycache__"}


@dataclass
class Run:
    """What one run dir says about its run (everything read from disk, nothing recomputed)."""

    path: Path
    config: dict[str, Any] = field(default_factory=dict)  # flat: "model.num_experts" -> 4
    overrides: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)  # metrics.json
    history: list[dict[str, Any]] = field(default_factory=list)  # history.csv rows
    problems: list[str] = field(default_factory=list)  # unreadable files

    @property
    def status(self) -> str:
        if self.info.get("status"):
            return str(self.info["status"])
        return "not started" if not self.history else "running"

    @property
    def metrics(self) -> dict[str, float]:
        if self.status != "completed":
            return {}
        return {
            k: float(v)
            for k, v in (self.info.get("metrics") or {}).items()
            if isinstance(v, (int, float))
        }

    @property
    def monitor(self) -> str | None:
        return self.info.get("monitor") or None


# --- finding and reading run dirs -------------------------------------------------------------


def is_run_dir(path: Path) -> bool:
    return (path / METRICS_FILE).is_file() or (path / HYDRA_CONFIG).is_file()


def find_run_dirs(paths: list[str | Path]) -> list[Path]:
    """Every run dir at or below the given paths, each once, in path order (job numbers numerically)."""
    found: dict[Path, None] = {}
    for given in paths:
        root = Path(given).expanduser()
        if not root.exists():
            raise MtlrecError(f"{given}: no such file or directory")
        if root.is_file():
            if root.name in (METRICS_FILE, HISTORY_FILE):
                root = root.parent
            else:
                raise MtlrecError(f"{given}: is a file; give a run dir or a dir holding run dirs")
        if is_run_dir(root):
            found.setdefault(root.resolve())
            continue
        matches = []
        for dirpath, dirnames, _ in os.walk(root):
            dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS]
            here = Path(dirpath)
            if is_run_dir(here):
                matches.append(here.resolve())
                dirnames[:] = []  # a run dir's subdirs are its own artifacts
        if not matches:
            raise MtlrecError(
                f"{given}: holds no run dir (a dir with metrics.json or .hydra/config.yaml)"
            )
        for m in sorted(matches, key=_natural_key):
            found.setdefault(m)
    return list(found)


def _natural_key(path: Path) -> list:
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in path.parts]


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """{"model": {"num_experts": 4}} -> {"model.num_experts": 4}; lists stay values."""
    if not isinstance(obj, dict):
        return {prefix[:-1]: obj} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in obj.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _load_config(path: Path) -> dict[str, Any]:
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(path)
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except Exception:
        # An interpolation that needs the original environment (a custom resolver, a missing
        # env var): keep the unresolved text rather than failing.
        return OmegaConf.to_container(cfg, resolve=False)


def _number(text: str) -> Any:
    if text == "":
        return math.nan
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def read_history(path: Path) -> list[dict[str, Any]]:
    with open(path, newline="") as f:
        return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]


def read_run(path: Path) -> Run:
    """One run dir -> Run. A missing or unreadable file is recorded, never raised."""
    run = Run(path=Path(path))
    readers = (
        (HYDRA_CONFIG, lambda p: setattr(run, "config", flatten(_load_config(p)))),
        (
            HYDRA_OVERRIDES,
            lambda p: setattr(
                run, "overrides", [str(o) for o in yaml.safe_load(p.read_text()) or []]
            ),
        ),
        (METRICS_FILE, lambda p: setattr(run, "info", json.loads(p.read_text()) or {})),
        (HISTORY_FILE, lambda p: setattr(run, "history", read_history(p))),
    )
    for name, reader in readers:
        file = run.path / name
        if not file.is_file():
            continue
        try:
            reader(file)
        except Exception as e:  # a half-copied or hand-edited file: show the run anyway
            run.problems.append(f"{name}: {type(e).__name__}: {e}")
    return run


def load_runs(paths: list[str | Path]) -> list[Run]:
    return [read_run(p) for p in find_run_dirs(paths)]


# --- which columns ----------------------------------------------------------------------------


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def differing_keys(runs: list[Run]) -> list[str]:
    """Config keys whose values are not the same in every run, override keys first."""
    keys: list[str] = []
    for run in runs:
        keys += [k for k in run.config if k not in keys]
    differing = []
    for key in keys:
        if key in IGNORED_KEYS or key.startswith("hydra."):
            continue
        # A key only some runs have (model.num_experts next to an ESMM run, a key added by a
        # newer mtlrec) counts when its value differs among the runs that have it.
        values = [run.config[key] for run in runs if key in run.config]
        if any(not _same(v, values[0]) for v in values[1:]):
            differing.append(key)
    # Runs of different models differ in every model.* default; show only the keys that also
    # vary within one model (same for datasets).
    for group in ("model", "dataset"):
        if f"{group}.name" not in differing:
            continue
        by_name: dict[str, list[Run]] = {}
        for run in runs:
            by_name.setdefault(str(run.config.get(f"{group}.name")), []).append(run)
        for key in [k for k in differing if k.startswith(f"{group}.") and k != f"{group}.name"]:
            varies = False
            for members in by_name.values():
                values = [r.config[key] for r in members if key in r.config]
                varies |= any(not _same(v, values[0]) for v in values[1:])
            if not varies:
                differing.remove(key)
    # data_order_seed follows seed by default (${seed}): a second column would say nothing new.
    if "data_order_seed" in differing and all(
        _same(r.config.get("data_order_seed"), r.config.get("seed")) for r in runs
    ):
        differing.remove("data_order_seed")
    order = []
    for run in runs:
        for o in run.overrides:
            key = o.split("=", 1)[0].lstrip("+~")
            if key in differing and key not in order:
                order.append(key)
    # Picking another model group changes every model.* key; model.name says it in one column.
    return order + [k for k in differing if k not in order]


def short_names(keys: list[str]) -> dict[str, str]:
    """Shortest dotted suffix that is unique among the keys: model.num_experts -> num_experts."""
    names = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            candidate = ".".join(parts[-n:])
            clash = [k for k in keys if k != key and k.split(".")[-n:] == parts[-n:]]
            if not clash:
                names[key] = candidate
                break
        else:
            names[key] = key
    for key in names:  # model.name -> model, device.type -> device
        parts = key.split(".")
        if len(parts) == 2 and parts[1] in ("name", "type") and parts[0] not in names.values():
            names[key] = parts[0]
    return names


def metric_kind(monitor: str) -> str:
    """val/mean_auc -> auc; val/mean_mse -> mse; val/loss -> loss."""
    return monitor.split("/", 1)[-1].split("_")[-1]


def default_metrics(runs: list[Run]) -> list[str]:
    """Test metrics of the monitored family, e.g. test/*_auc* for val/mean_auc, mean first."""
    monitors = [r.monitor for r in runs if r.monitor]
    names: list[str] = []
    for run in runs:
        names += [k for k in run.metrics if k not in names]
    if not monitors:
        return sorted(k for k in names if k.startswith("test/"))[:6]
    kinds = []
    for m in monitors:
        if metric_kind(m) not in kinds:
            kinds.append(metric_kind(m))
    chosen = [
        k
        for k in names
        if k.startswith("test/") and any(kind in k.split("/", 1)[1].split("_") for kind in kinds)
    ]
    return sorted(chosen, key=lambda k: (not k.split("/", 1)[1].startswith("mean_"), k))


def higher_is_better(metric: str) -> bool:
    name = metric.rsplit("/", 1)[-1]
    return any(t in name.split("_") for t in ("auc", "gauc", "accuracy", "acc", "r2"))


# --- rows ---------------------------------------------------------------------------------------


def _display_label(runs: list[Run]) -> dict[Path, str]:
    """Run paths relative to their common parent (sweep job numbers stay short)."""
    paths = [r.path for r in runs]
    if len(paths) == 1:
        return {paths[0]: paths[0].name}
    common = Path(os.path.commonpath([str(p) for p in paths]))
    return {p: str(p.relative_to(common)) or p.name for p in paths}


def parse_filters(filters: list[str], runs: list[Run], names: dict[str, str]) -> list[Run]:
    for item in filters:
        if "=" not in item:
            raise MtlrecError(
                f"--filter {item}: expected key=value, e.g. --filter model.num_experts=4"
            )
        key, value = item.split("=", 1)
        if key == "status":
            runs = [r for r in runs if r.status == value]
            continue
        full = _resolve_key(key, runs, names)
        wanted = yaml.safe_load(value) if value else ""
        runs = [r for r in runs if full in r.config and _same_value(r.config[full], wanted)]
    return runs


def _same_value(have: Any, wanted: Any) -> bool:
    if isinstance(have, (int, float)) and isinstance(wanted, (int, float)):
        return float(have) == float(wanted)
    return _same(have, wanted) or str(have) == str(wanted)


def _resolve_key(key: str, runs: list[Run], names: dict[str, str]) -> str:
    all_keys = {k for r in runs for k in r.config}
    if key in all_keys:
        return key
    for full, short in names.items():  # the column names of the table work too
        if short == key:
            return full
    for suffix in (".name", ".type"):  # model -> model.name, device -> device.type
        if key + suffix in all_keys:
            return key + suffix
    matches = [k for k in all_keys if k.endswith("." + key)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise MtlrecError(f"--filter {key}: ambiguous, matches {', '.join(sorted(matches))}")
    raise MtlrecError(
        f"--filter {key}: no compared run has this config key (e.g. model.num_experts, seed, "
        "trainer.lr, or status)"
    )


@dataclass
class Table:
    """Columns and rows ready for any output format. Values stay raw (float/int/str/None)."""

    columns: list[str]
    rows: list[dict[str, Any]]
    metric_columns: list[str]
    grouped: bool = False


def build_table(
    runs: list[Run],
    metrics: list[str] | None = None,
    group_by_seed: bool | None = None,
) -> Table:
    """Runs -> table. group_by_seed None = automatic (when only the seed differs)."""
    keys = differing_keys(runs)
    names = short_names(keys)
    metrics = metrics or default_metrics(runs)
    only_seed = bool(keys) and all(k in SEED_KEYS for k in keys) and len(runs) > 1
    grouped = only_seed if group_by_seed is None else group_by_seed
    labels = _display_label(runs)
    any_error = any(r.info.get("error") or r.problems for r in runs)
    if not grouped:
        columns = ["run", *[names[k] for k in keys], *metrics]
        columns += ["best_epoch", "epochs", "wall_s", "samples_per_s", "status"]
        columns += ["error"] if any_error else []
        rows = []
        for run in runs:
            row: dict[str, Any] = {"run": labels[run.path]}
            row.update({names[k]: run.config.get(k) for k in keys})
            row.update({m: run.metrics.get(m) for m in metrics})
            row["best_epoch"] = run.info.get("best_epoch")
            row["epochs"] = run.info.get("epochs_run") or len(run.history) or None
            row["wall_s"] = run.info.get("wall_seconds")
            row["samples_per_s"] = run.info.get("train_samples_per_s")
            row["status"] = run.status
            if any_error:
                row["error"] = run.info.get("error") or "; ".join(run.problems) or None
            rows.append(row)
        return Table(columns, rows, metrics)

    group_keys = [k for k in keys if k not in SEED_KEYS]
    groups: dict[str, list[Run]] = {}
    for run in runs:
        ident = json.dumps([run.config.get(k) for k in group_keys], default=str)
        groups.setdefault(ident, []).append(run)
    columns = [names[k] for k in group_keys] + metrics + ["n", "seeds", "wall_s", "status"]
    rows = []
    for members in groups.values():
        done = [r for r in members if r.status == "completed"]
        row = {names[k]: members[0].config.get(k) for k in group_keys}
        for m in metrics:
            values = [r.metrics[m] for r in done if m in r.metrics]
            row[m] = mean_std(values)
        row["n"] = len(done)
        row["seeds"] = ",".join(str(r.config.get("seed", r.info.get("seed"))) for r in members)
        walls = [r.info["wall_seconds"] for r in done if r.info.get("wall_seconds") is not None]
        row["wall_s"] = statistics.fmean(walls) if walls else None
        counts: dict[str, int] = {}
        for r in members:
            counts[r.status] = counts.get(r.status, 0) + 1
        row["status"] = ", ".join(f"{c} {s}" for s, c in counts.items())
        rows.append(row)
    return Table(columns, rows, metrics, grouped=True)


def mean_std(values: list[float]) -> tuple[float, float] | None:
    """(mean, sample std with n - 1 in the denominator; 0 for one value), None for no values."""
    if not values:
        return None
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return mean, std


def sort_rows(table: Table, key: str | None, reverse: bool) -> None:
    if key is None:
        return
    if key not in table.columns:
        raise MtlrecError(f"--sort {key}: no such column; columns: {', '.join(table.columns)}")
    descending = higher_is_better(key) if key in table.metric_columns else False
    if reverse:
        descending = not descending

    def value(row: dict) -> Any:
        v = row.get(key)
        if isinstance(v, tuple):
            v = v[0]
        return v

    present = [r for r in table.rows if _present(value(r))]
    missing = [r for r in table.rows if not _present(value(r))]  # failed runs: always last
    numeric = all(isinstance(value(r), (int, float)) for r in present)
    present.sort(key=lambda r: value(r) if numeric else str(value(r)), reverse=descending)
    table.rows = present + missing


def _present(v: Any) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


# --- output -------------------------------------------------------------------------------------


def _fmt(value: Any, column: str) -> str:
    if value is None:
        return ""
    if isinstance(value, tuple):
        mean, std = value
        return f"{mean:.4f} ± {std:.4f}"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        if column == "samples_per_s":
            return f"{value:,.0f}"
        if column == "wall_s":
            return f"{value:.1f}"
        return f"{value:.4f}" if abs(value) < 1e4 else f"{value:.4g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def render(table: Table, fmt: str, width: int | None = None) -> str:
    if fmt == "json":
        out = []
        for row in table.rows:
            item = {}
            for c in table.columns:
                v = row.get(c)
                if isinstance(v, tuple):
                    v = {"mean": v[0], "std": v[1]}
                if isinstance(v, float) and math.isnan(v):
                    v = None
                item[c] = v
            out.append(item)
        return json.dumps(out, indent=2) + "\n"
    if fmt == "csv":
        columns = []
        for c in table.columns:
            columns += (
                [f"{c}_mean", f"{c}_std"] if table.grouped and c in table.metric_columns else [c]
            )
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(columns)
        for row in table.rows:
            cells = []
            for c in table.columns:
                v = row.get(c)
                if table.grouped and c in table.metric_columns:
                    cells += ["", ""] if v is None else [repr(v[0]), repr(v[1])]
                elif isinstance(v, float):
                    cells.append("" if math.isnan(v) else repr(v))
                elif isinstance(v, (list, dict)):
                    cells.append(json.dumps(v))
                else:
                    cells.append("" if v is None else str(v))
            writer.writerow(cells)
        return buf.getvalue()
    if fmt == "markdown":
        lines = ["| " + " | ".join(table.columns) + " |"]
        lines.append(
            "| "
            + " | ".join("---:" if c in table.metric_columns else "---" for c in table.columns)
            + " |"
        )
        for row in table.rows:
            cells = [_fmt(row.get(c), c).replace("|", "\\|") for c in table.columns]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"
    from rich.console import Console
    from rich.table import Table as RichTable

    rich_table = RichTable(title=f"{len(table.rows)} {'group' if table.grouped else 'run'}(s)")
    for c in table.columns:
        numeric = c in table.metric_columns or c in (
            "best_epoch",
            "epochs",
            "wall_s",
            "samples_per_s",
            "n",
        )
        rich_table.add_column(
            c,
            justify="right" if numeric else "left",
            overflow="fold",
            no_wrap=c != "error",
            max_width=60 if c == "error" else None,
        )
    for row in table.rows:
        status = str(row.get("status", ""))
        style = None if "completed" in status and "," not in status else "yellow"
        if status.startswith("failed"):
            style = "red"
        rich_table.add_row(*[_fmt(row.get(c), c) for c in table.columns], style=style)
    buf = io.StringIO()
    if width is None:
        width = shutil.get_terminal_size((250, 40)).columns if sys.stdout.isatty() else 250
    console = Console(file=buf, width=width, force_terminal=False, color_system=None)
    console.print(rich_table)
    return buf.getvalue()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="mtlrec compare",
        description="Compare run dirs (single runs, sweep dirs, or a mix) in one table.",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="run dirs or dirs holding them")
    parser.add_argument(
        "--metric",
        action="append",
        default=None,
        help="metric column, e.g. test/cvr_auc (repeatable; default: test metrics of the monitored family)",
    )
    parser.add_argument(
        "--sort",
        default=None,
        metavar="COLUMN",
        help="sort by a column, best first for metrics (AUC high, losses low); config columns ascending",
    )
    parser.add_argument("--reverse", action="store_true", help="reverse the --sort order")
    parser.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="keep runs whose config KEY equals VALUE (repeatable; also status=failed)",
    )
    parser.add_argument("--format", choices=FORMATS, default="table")
    parser.add_argument("--output", metavar="FILE", help="write to FILE instead of the terminal")
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--group-by-seed",
        dest="group_by_seed",
        action="store_true",
        default=None,
        help="one row per config with mean ± std over seeds and n (automatic when only the seed differs)",
    )
    group.add_argument(
        "--no-group",
        dest="group_by_seed",
        action="store_false",
        help="one row per run, even when only the seed differs",
    )
    parser.add_argument(
        "--plot", metavar="DIR", help='write PNG plots to DIR (needs: pip install "mtlrec[plot]")'
    )
    args = parser.parse_args(argv)

    if args.plot:
        from mtlrec.runs.plots import require_matplotlib

        require_matplotlib()  # fail before the work, in one line
    runs = load_runs(args.paths)
    keys = differing_keys(runs)
    runs = parse_filters(args.filter, runs, short_names(keys))
    if not runs:
        raise MtlrecError(f"--filter {' '.join(args.filter)}: no run matches")
    table = build_table(runs, args.metric, args.group_by_seed)
    missing = [m for m in (args.metric or []) if not any(m in r.metrics for r in runs)]
    if missing and any(r.metrics for r in runs):
        known = sorted({k for r in runs for k in r.metrics})
        raise MtlrecError(
            f"--metric {missing[0]}: no compared run has this metric; metrics: {', '.join(known)}"
        )
    sort_rows(table, args.sort, args.reverse)
    text = render(table, args.format)
    if args.output:
        from mtlrec.runs.run_dir import atomic_write_text

        atomic_write_text(Path(args.output), text)
        print(f"wrote {args.output} ({len(table.rows)} rows)", file=sys.stderr)
    else:
        sys.stdout.write(text)
    if args.plot:
        from mtlrec.runs.plots import write_plots

        written = write_plots(runs, Path(args.plot), table.metric_columns)
        for path in written:
            print(f"wrote {path}", file=sys.stderr)
        if not written:
            print("no plots written: no compared run has a history.csv yet", file=sys.stderr)
    return 0


__all__ = ["Run", "build_table", "find_run_dirs", "load_runs", "main", "read_run", "render"]
