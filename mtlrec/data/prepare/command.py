"""`mtlrec prepare`: compose the prepare config, build the dataset through its source
(mtlrec.data.sources.prepare_dataset), print a summary."""

from __future__ import annotations

import math
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mtlrec.data.prepare.pipeline import Result
from mtlrec.data.prepare.plan import SPLITS
from mtlrec.errors import MtlrecError, UsageError


def dataset_override(overrides: Sequence[str]) -> str | None:
    """The NAME of a `dataset=NAME` (or `+dataset=NAME`) override, None without one."""
    return next(
        (o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0].lstrip("+") == "dataset"),
        None,
    )


def compose_prepare(overrides: Sequence[str], config_dir: str | None = None) -> dict[str, Any]:
    """The resolved `prepare` config (conf/prepare.yaml + the user's overrides), as a dict."""
    import yaml
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException, MissingConfigException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    overrides = list(overrides)
    from mtlrec.override_syntax import unparsable_override

    bad = unparsable_override(overrides)
    if bad is not None:
        raise MtlrecError(bad)
    if config_dir is not None:
        cdir = Path(config_dir).expanduser().resolve()
        if not cdir.is_dir():
            raise MtlrecError(f"{config_dir}: --config-dir is not a directory")
        overrides.append(f"hydra.searchpath=['file://{cdir}']")
    try:
        with initialize_config_module(config_module="mtlrec.conf", version_base="1.3"):
            cfg = compose(config_name="prepare", overrides=overrides)
        return dict(OmegaConf.to_container(cfg, resolve=True))  # type: ignore[arg-type]
    except MissingConfigException as e:  # dataset=NAME of no config: a wrong command line
        first = str(e).splitlines()[0]  # In 'prepare': Could not find 'dataset/foo'
        missing = first.split("Could not find", 1)[-1].strip().strip("'")
        group, _, name = missing.rpartition("/")
        if group != "dataset" or not e.options:
            raise UsageError(f"config: {first}") from None
        raise UsageError(
            f"unknown dataset '{name}'; known datasets: {', '.join(e.options)} "
            "(your own: --config-dir DIR dataset=NAME)"
        ) from None
    except (HydraException, OmegaConfBaseException) as e:
        msg = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
        # A key or option no config has (a mistyped override): a wrong command line, exit 2.
        error = UsageError if msg.startswith("Could not override") else MtlrecError
        raise error(f"config: {msg}") from None
    except yaml.YAMLError as e:  # a dataset yaml of the user's that does not parse
        msg = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
        raise MtlrecError(f"config: not valid YAML: {msg}") from None


def _splits_table(result: Result):
    from rich.table import Table

    spec = result.spec
    table = Table(title=f"{spec.name}: rows and label rates per split")
    table.add_column("split")
    table.add_column("rows", justify="right")
    for t in spec.tasks:
        where = f" | {t.where}=1" if t.where else ""
        table.add_column(f"{t.name} ({t.label}{where})", justify="right")
    for name in SPLITS:
        s = result.summary[name]
        row = [name, f"{s.rows:,}"]
        for t in spec.tasks:
            space = s.space.get(t.name, 0)
            value = s.positives.get(t.name, 0.0) / space if space else math.nan
            row.append(f"{'pos ' if t.type == 'binary' else 'mean '}{value:.4f}")
        table.add_row(*row)
    return table


def _fields_table(result: Result):
    from rich.table import Table

    spec = result.spec
    table = Table(title="embedded fields (id 0 = out of vocabulary; bags/sequences: per value)")
    table.add_column("field")
    table.add_column("vocab", justify="right")
    for name in SPLITS:
        table.add_column(f"oov {name}", justify="right")
    table.add_column("notes")
    for c, size in result.vocab_sizes.items():
        multi = spec.feature(c).multi
        rates = []
        for s in SPLITS:
            split = result.summary[s]
            total = split.values.get(c, 0) if multi else split.rows
            rates.append(f"{split.oov.get(c, 0) / max(1, total):.2%}")
        table.add_row(c, f"{size:,}", *rates, field_notes(spec, result, c))
    return table


def field_notes(spec, result: Result, name: str) -> str:
    """Kind, truncation counts and the hash collision estimate of a field, in a few words."""
    f = spec.feature(name)
    notes = []
    if f.multi:
        cut = sum(result.summary[s].truncated.get(name, 0) for s in SPLITS)
        notes.append(f"{f.kind} max_len {f.max_len}: {cut:,} rows truncated")
        if f.shares_vocab_with:
            notes.append(f"ids of {f.shares_vocab_with}")
    est = spec.info.get("hashing", {}).get(name)
    if est:
        colliding = est["estimated_colliding_values"]
        shown = "all buckets taken" if colliding is None else f"~{colliding:,.0f} values collide"
        notes.append(f"hashed into {est['buckets']:,} buckets, {shown}")
    return "; ".join(notes)


def train_hint(name: str, config_dir: str | None, overrides: Sequence[str] = ()) -> str:
    """The `mtlrec train` command for the dataset just prepared, with the prepare overrides that
    shape the dataset (its path may depend on them) and without prepare-only ones."""
    kept = [
        o
        for o in overrides
        if o.split("=", 1)[0].lstrip("+~") not in ("dataset", "overwrite")
        and not o.startswith("hydra.")
    ]
    parts = ["mtlrec", "train"]
    if config_dir:
        parts += ["--config-dir", config_dir]
    parts += [f"dataset={name}", *kept]
    return " ".join(shlex.quote(p) for p in parts)


def print_summary(
    result: Result, console=None, config_dir: str | None = None, overrides: Sequence[str] = ()
) -> None:
    from rich.console import Console

    console = console or Console()
    spec = result.spec
    console.print(_splits_table(result))
    if result.vocab_sizes:
        console.print(_fields_table(result))
    dense = [f.name for f in spec.dense]
    if dense:
        shown = ", ".join(dense[:8]) + (f", ... ({len(dense)} in all)" if len(dense) > 8 else "")
        console.print(f"dense: {shown}")
    unused = spec.info.get("unused_columns") or []
    if unused:
        shown = ", ".join(unused[:12]) + (
            f", ... ({len(unused)} in all)" if len(unused) > 12 else ""
        )
        print(f"unused raw columns (not in the dataset config, not prepared): {shown}")
    dropped = {s: result.summary[s].dropped for s in SPLITS if result.summary[s].dropped}
    if dropped:
        print(f"dropped rows breaking the funnel (funnel_violations=drop): {dropped}")
    # Plain prints: paths and commands must not be wrapped to the terminal width.
    print(f"prepared {spec.name} at {result.path}")
    dataset = dataset_override(overrides)
    name = spec.name if dataset is None else dataset
    print(f"train with: {train_hint(name, config_dir, overrides)}")
