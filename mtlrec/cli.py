"""The `mtlrec` command: one CLI, subcommands.

mtlrec train [hydra overrides]       train (Hydra: -m, --cfg, --info, hydra.run.dir=... all work)
mtlrec --version
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

USAGE = """usage: mtlrec <command> [args]

commands:
  train      train a model; Hydra overrides, e.g. `mtlrec train model=mmoe trainer.epochs=5`
             (`mtlrec train --help` lists the config groups, `--cfg job` shows the config)
             `mtlrec train resume=RUN_DIR [trainer.epochs=N]` continues an interrupted run
  prepare    raw files -> a prepared dataset, e.g. `mtlrec prepare dataset=census dataset.raw_dir=DIR`
             (`--config-dir my_conf dataset=my_data` for your own data; overwrite=true to redo)
  compare    one table of run dirs (single runs, sweeps), e.g. `mtlrec compare outputs/multirun/DATE/TIME`
             (--metric, --sort, --filter k=v, --group-by-seed, --format csv|markdown|json, --plot DIR)
  evaluate   metrics of a run's best checkpoint: `mtlrec evaluate RUN_DIR [--split test | --data PATH]`
  predict    score a parquet file: `mtlrec predict RUN_DIR --input X.parquet --output Y.parquet`
             (--batch-size N rows at a time, --id-columns COL... copied to the output)
  tune       hyper-parameter search (Optuna): `mtlrec tune mmoe [overrides] [--trials N] [--jobs N]`
             (searches in conf/search/; `--study-dir DIR` resumes an interrupted study)
  export     a standalone model: `mtlrec export RUN_DIR --format torchscript|onnx` (checked within 1e-5)
"""

# Subcommands other than train: name -> "module:function" taking argv (list[str]) -> exit code.
COMMANDS: dict[str, str] = {
    "prepare": "mtlrec.data.prepare:main",
    "compare": "mtlrec.runs.compare:main",
    "evaluate": "mtlrec.inference:evaluate_main",
    "predict": "mtlrec.inference:predict_main",
    "export": "mtlrec.inference:export_main",
    "tune": "mtlrec.tuning.command:main",
}


def _override_key(arg: str) -> str:
    return arg.split("=", 1)[0].lstrip("+~")


def translate_resume(args: list[str]) -> list[str]:
    """`resume=RUN_DIR` -> the original run's overrides + yours + hydra.run.dir=RUN_DIR.

    The run continues in its own directory with its own config: the overrides it was started
    with (RUN_DIR/.hydra/overrides.yaml) are replayed, yours come after them (mtlrec.experiment
    checks that only trainer.epochs, trainer.progress, trainer.num_threads and checkpoint.* change).
    """
    given = [a for a in args if _override_key(a) == "resume"]
    if not given:
        return args
    value = given[-1].split("=", 1)[1].strip().strip("'\"")
    if value in ("", "null"):
        return args
    if any(a in ("-m", "--multirun") for a in args):
        raise ValueError("resume= continues one run; it cannot be combined with -m/--multirun")
    if "'" in value:
        raise ValueError(f"resume={value}: run dir paths with a quote (') are not supported")
    run_dir = Path(value).expanduser().absolute()
    if not run_dir.is_dir():
        raise ValueError(f"resume={value}: no such run dir")
    saved = run_dir / ".hydra" / "overrides.yaml"
    from datetime import datetime

    from mtlrec.runs.run_dir import RESUME_ACCEPTED

    # Each resume attempt records its config in its own .hydra/resume-<time>/ (the original .hydra/
    # stays as the run started); the latest attempt that got to train holds the overrides to replay.
    accepted = sorted((run_dir / ".hydra").glob(f"resume-*/{RESUME_ACCEPTED}"))
    if accepted:
        saved = accepted[-1].parent / "overrides.yaml"
    if not saved.is_file():
        raise ValueError(f"resume={value}: not a run dir of `mtlrec train` ({saved} is missing)")
    for a in args:
        if _override_key(a) == "hydra.run.dir":
            raise ValueError("resume= sets hydra.run.dir itself (the run continues in its own dir)")
    import yaml

    original = [str(o) for o in (yaml.safe_load(saved.read_text()) or [])]
    mine = [a for a in args if _override_key(a) != "resume"]
    mine_keys = {_override_key(a) for a in mine if "=" in a}
    replay = [
        o
        for o in original
        if _override_key(o) not in mine_keys
        and _override_key(o) not in ("resume", "hydra.run.dir", "hydra.output_subdir")
    ]
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")
    return [
        *replay,
        *mine,
        f"resume='{run_dir}'",
        f"hydra.run.dir='{run_dir}'",
        f"hydra.output_subdir=.hydra/resume-{stamp}",
    ]


def check_overrides(args: list[str]) -> None:
    """Compose a single run's config first, so that an unknown config name or key is one line.

    Hydra reports these over several lines (option lists, search path); this says the same in
    one: `Could not find 'model/foo': unknown model 'foo'; valid: esmm, mmoe, ...` /
    `Could not override 'trainer.lrr': no such key; did you mean 'trainer.lr'? ...`.
    Only for single runs with plain overrides; anything else is left to Hydra as it is.
    """
    if any(a.startswith("-") for a in args):  # -m, --cfg, --help, ...: Hydra's own business
        return
    overrides = [a for a in args if not _override_key(a).startswith("hydra")]
    from hydra import compose, initialize_config_module
    from hydra.errors import (
        ConfigCompositionException,
        MissingConfigException,
        OverrideParseException,
    )

    try:
        with initialize_config_module(config_module="mtlrec.conf", version_base="1.3"):
            cfg = compose(config_name="train", overrides=overrides)
    except MissingConfigException as e:
        first = str(e).splitlines()[0]  # In 'train': Could not find 'model/foo'
        missing = first.split("Could not find", 1)[-1].strip().strip("'")
        group, _, name = missing.rpartition("/")
        if e.options and group:
            raise ValueError(
                f"Could not find '{missing}': unknown {group} '{name}'; valid: {', '.join(e.options)}"
            ) from None
        raise ValueError(str(e).splitlines()[0]) from None
    except ConfigCompositionException as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        if lines and lines[0].startswith("Could not override '"):
            key = lines[0].split("'")[1]
            raise ValueError(
                f"Could not override '{key}': no such key; {_key_hint(key, overrides)}"
            ) from None
        raise ValueError("; ".join(lines[:2])) from None
    except OverrideParseException as e:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        parser, bad = OverridesParser.create(), []
        for a in overrides:
            try:
                parser.parse_override(a)
            except Exception:  # the grammar raises HydraException for single overrides
                bad.append(a)
        raise ValueError(
            f"cannot parse the override(s) {bad}: {str(e).splitlines()[0]} "
            "(quote values with brackets or spaces, e.g. 'model.expert_dims=[64,32]')"
        ) from None
    except Exception:  # anything else: Hydra explains it itself when it runs
        return
    del cfg


def _key_hint(key: str, overrides: list[str]) -> str:
    """`did you mean 'trainer.lr'? trainer has [...]` for a mistyped override key."""
    import difflib

    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    parent, _, leaf = key.rpartition(".")
    try:
        rest = [o for o in overrides if _override_key(o) != key]
        with initialize_config_module(config_module="mtlrec.conf", version_base="1.3"):
            cfg = compose(config_name="train", overrides=rest)
        node = OmegaConf.select(cfg, parent) if parent else cfg
    except Exception:
        node = None
    keys = sorted(str(k) for k in node) if hasattr(node, "keys") else []
    close = difflib.get_close_matches(leaf, keys, n=1)
    hint = f"did you mean '{parent + '.' if parent else ''}{close[0]}'? " if close else ""
    where = f"{parent} has" if parent else "the config has"
    return f"{hint}{where} {keys}; to add a new key use +{key}=..."


def main(argv: list[str] | None = None) -> None:
    try:
        _main(argv)
    except KeyboardInterrupt:  # Ctrl-C outside a training loop (startup, evaluation, predict)
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print("mtlrec: interrupted", file=sys.stderr)
        sys.exit(130)


def _main(argv: list[str] | None = None) -> None:
    # Small models on few cores: OpenMP's default busy-wait makes threads spin against each other
    # and against parallel jobs (up to ~26x slower with 2 threads when the other core is busy).
    # Must be set before torch loads; users can still override it.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        sys.exit(0 if argv else 2)
    if argv[0] == "--version":
        from mtlrec import __version__

        print(f"mtlrec {__version__}")
        return
    command, rest = argv[0], argv[1:]
    if command == "train":
        from mtlrec.train import main as train_main

        try:
            rest = translate_resume(rest)
            check_overrides(rest)
        except ValueError as e:  # before Hydra: print the one line ourselves
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            print(f"mtlrec train: error: {e}", file=sys.stderr)
            sys.exit(1)
        sys.argv = [f"{os.path.basename(sys.argv[0])} train", *rest]
        train_main()
        return
    if command not in COMMANDS:
        print(
            f"mtlrec: unknown command '{command}'; commands: {', '.join(['train', *sorted(COMMANDS)])}",
            file=sys.stderr,
        )
        sys.exit(2)
    import importlib

    from mtlrec.errors import MtlrecError

    module, func = COMMANDS[command].split(":")
    try:
        code = getattr(importlib.import_module(module), func)(rest)
    except MtlrecError as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"mtlrec {command}: error: {e}", file=sys.stderr)
        sys.exit(1)
    sys.exit(code or 0)


if __name__ == "__main__":
    main()
