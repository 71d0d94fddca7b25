"""`mtlrec train [hydra overrides]`: train a model. The arguments go untouched to Hydra.

Everything Hydra offers works: `-m` sweeps, `--cfg job`, `--info`, `--help`, `hydra.run.dir=...`,
`-sc install=bash` (shell completion). Before Hydra runs, two steps of mtlrec's own:
`resume=RUN_DIR` becomes the run's original overrides (translate_resume), and a single run's
config is composed once so that an unknown name or key is one line (check_overrides).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from mtlrec.commands import ERROR, OK, USAGE
from mtlrec.commands.resume_args import (
    check_config_dir,
    is_sweep_dir_resume,
    start_over_without_checkpoint,
)

SUMMARY = "train a model (Hydra overrides: model=mmoe trainer.epochs=5; resume=RUN_DIR)"
FORWARDS = True
EPILOG = """`mtlrec train --help` lists the config groups, `--cfg job` shows the composed config,
`mtlrec train resume=RUN_DIR [trainer.epochs=N]` continues an interrupted run."""


def configure(parser) -> None:
    """Nothing to declare: Hydra parses train's arguments."""


def run(argv: list[str]) -> int:
    args = list(argv)
    try:
        check_config_dir(args)
        if is_sweep_dir_resume(args):
            from mtlrec.commands.sweep_resume import resume_sweep

            return resume_sweep(args)
        args = start_over_without_checkpoint(translate_resume(args))
        check_overrides(args)
    except ValueError as e:  # before Hydra: print the one line ourselves, nothing is written
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"mtlrec train: error: {e}", file=sys.stderr)
        # A mistyped override is a wrong command line (exit 2, as argparse does); a bad value is 1.
        return USAGE if isinstance(e, OverrideError) else ERROR
    # Hydra reads sys.argv. Its completion script names the program by basename(argv[0]): that
    # must be `mtlrec`; elsewhere (usage lines) `mtlrec train` reads better.
    completing = any(a in ("-sc", "--shell-completion") for a in args)
    sys.argv = ["mtlrec" if completing else "mtlrec train", *args]
    return run_hydra()


def run_hydra() -> int:
    """Hydra's `mtlrec train` on sys.argv; a refused resume attempt is undone afterwards."""
    from mtlrec.runs import resume as resume_attempt
    from mtlrec.train import main as train_main

    try:
        with atomic_hydra_configs(), composed_mode():
            train_main()
    except SystemExit as e:
        if e.code not in (0, None):
            resume_attempt.settle_refused()  # a resume refused by its checks changes nothing
        return job_exit(e)
    except BaseException:
        resume_attempt.settle_refused()
        raise
    return OK


@contextlib.contextmanager
def atomic_hydra_configs() -> Iterator[None]:
    """Hydra's .hydra/{config,hydra,overrides}.yaml written atomically while the block runs.

    Hydra writes them with a plain open(); on a full disk that is its traceback and a half
    file. Here a full disk is one line (`RUN/.hydra/config.yaml: cannot write it: No space left
    on device; ...`, exit 1) and this launch's files are taken back: the yaml files it wrote,
    the .hydra dir, the empty train.log and the run dir when they are left empty.
    """
    import hydra.core.utils as hydra_utils
    from omegaconf import OmegaConf

    from mtlrec.runs.atomic import NoSpaceError, atomic_write_text

    original = getattr(hydra_utils, "_save_config", None)
    if original is None:  # a Hydra without this private helper: its own writes, unprotected
        yield
        return
    written: list[Path] = []
    emptied: list[Path] = []

    def save_config(cfg, filename: str, output_dir: Path) -> None:
        path = Path(output_dir) / filename
        try:
            atomic_write_text(path, OmegaConf.to_yaml(cfg))
        except NoSpaceError as e:
            emptied.extend(_take_back(written, path.parent))
            # As a failed single run ends (mtlrec.train): job_exit prints the line, once,
            # without Hydra's "Set the environment variable HYDRA_FULL_ERROR" footer.
            raise SystemExit(ERROR) from e
        written.append(path)

    hydra_utils._save_config = save_config
    try:
        yield
    finally:
        hydra_utils._save_config = original
        if emptied:  # the run dir's claim (runs/lock.py) was its last file: drop it, then the dir
            from mtlrec.runs import lock

            lock._release_all()
            for d in emptied:
                with contextlib.suppress(OSError):
                    d.rmdir()


def _take_back(written: list[Path], config_dir: Path) -> list[Path]:
    """Remove what a launch wrote before a full disk stopped it; the run dir, when it is to be
    removed too once its lock is gone (dirs are removed only when left empty)."""
    for path in written:
        path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        config_dir.rmdir()
    if config_dir.parent.name == ".hydra":  # a resume's .hydra/resume-<time>: the run stays
        return []
    run_dir = config_dir.parent
    log_file = run_dir / "train.log"
    if log_file.is_file() and log_file.stat().st_size == 0:
        log_file.unlink()
    return [run_dir]


def job_exit(e: SystemExit) -> int:
    """How a Hydra job ended. A single run that failed with an MtlrecError ends with
    `SystemExit(1) from error` (mtlrec.train), so Hydra prints none of its header/footer: the
    error's line is printed here, once, unless the run's log has already shown it."""
    from mtlrec.errors import MtlrecError, reported

    cause = e.__cause__
    if e.code != ERROR or not isinstance(cause, MtlrecError):
        raise e
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise cause
    if not reported(cause):
        print(cause, file=sys.stderr)
    return ERROR


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

    from mtlrec.commands.resume_args import checkpoint_problem, config_sources
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

    problem = checkpoint_problem(run_dir)
    if problem:
        raise ValueError(problem)
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
        *config_sources(saved.parent / "hydra.yaml", mine),
        *replay,
        *mine,
        f"resume='{run_dir}'",
        f"hydra.run.dir='{run_dir}'",
        f"hydra.output_subdir=.hydra/resume-{stamp}",
    ]


class OverrideError(ValueError):
    """An override that names no config key or option, or does not parse: a usage error."""


def check_overrides(args: list[str]) -> None:
    """Compose a single run's config first, so that an unknown config name or key is one line.

    Hydra reports these over several lines (option lists, search path); this says the same in
    one: `Could not find 'model/foo': unknown model 'foo'; valid: esmm, mmoe, ...` /
    `Could not override 'trainer.lrr': no such key; did you mean 'trainer.lr'? ...`.
    Only for single runs with plain overrides; anything else is left to Hydra as it is.
    """
    _mode.clear()
    args, config_dir = _without_config_dir(args)
    from mtlrec.override_syntax import unparsable_override

    unquoted = unparsable_override(args)  # any override, hydra.* too (e.g. a run dir with spaces)
    if unquoted is not None:
        raise OverrideError(unquoted)
    if any(a.startswith("-") for a in args):  # -m, --cfg, --help, ...: Hydra's own business
        return
    # Your own config dirs take part (the packaged configs alone do not know your dataset).
    overrides = [
        a
        for a in args
        if not _override_key(a).startswith("hydra") or _override_key(a) == "hydra.searchpath"
    ]
    if config_dir is not None:
        overrides = [_with_search_dir(overrides, config_dir)] + [
            o for o in overrides if _override_key(o) != "hydra.searchpath"
        ]
    from hydra import compose, initialize_config_module
    from hydra.errors import (
        ConfigCompositionException,
        MissingConfigException,
        OverrideParseException,
    )

    try:
        with initialize_config_module(config_module="mtlrec.conf", version_base="1.3"):
            cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    except MissingConfigException as e:
        first = str(e).splitlines()[0]  # In 'train': Could not find 'model/foo'
        missing = first.split("Could not find", 1)[-1].strip().strip("'")
        group, _, name = missing.rpartition("/")
        if e.options and group:
            raise OverrideError(
                f"Could not find '{missing}': unknown {group} '{name}'; valid: {', '.join(e.options)}"
            ) from None
        raise OverrideError(str(e).splitlines()[0]) from None
    except ConfigCompositionException as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        if lines and lines[0].startswith("Could not override '"):
            key = lines[0].split("'")[1]
            raise OverrideError(
                f"Could not override '{key}': no such key; {_key_hint(key, overrides)}"
            ) from None
        raise OverrideError("; ".join(lines[:2])) from None
    except OverrideParseException as e:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        parser, bad = OverridesParser.create(), []
        for a in overrides:
            try:
                parser.parse_override(a)
            except Exception:  # the grammar raises HydraException for single overrides
                bad.append(a)
        raise OverrideError(
            f"cannot parse the override(s) {bad}: {str(e).splitlines()[0]} "
            "(quote values with brackets or spaces, e.g. 'model.expert_dims=[64,32]')"
        ) from None
    except Exception:  # anything else: Hydra explains it itself when it runs
        return
    kept = {_override_key(o) for o in overrides}
    dropped = {_override_key(a) for a in args} - kept
    if dropped <= MODE_NEUTRAL:  # the overrides Hydra gets compose the same hydra.mode
        _mode.append(cfg.hydra.mode)
    del cfg


# hydra.* overrides that check_overrides leaves out and that cannot change hydra.mode
MODE_NEUTRAL = {"hydra.run.dir", "hydra.output_subdir", "hydra.job.chdir", "hydra.verbose"}
_mode: list = []  # hydra.mode of the config check_overrides composed (one single run)


@contextlib.contextmanager
def composed_mode() -> Iterator[None]:
    """Hydra composes a run's whole config twice: once only to read `hydra.mode`
    (Hydra.get_mode), then to run. check_overrides has composed this run's config already, so
    its hydra.mode is handed over: one composition (~0.3 s of CPU) fewer. Without it (a sweep,
    --cfg, ...) or with a Hydra that lacks get_mode, Hydra composes as it always did."""
    from hydra._internal.hydra import Hydra

    original = getattr(Hydra, "get_mode", None)
    if not _mode or original is None:
        yield
        return
    mode = _mode.pop()
    Hydra.get_mode = lambda self, config_name, overrides: mode  # type: ignore[method-assign]
    try:
        yield
    finally:
        Hydra.get_mode = original  # type: ignore[method-assign]


def _without_config_dir(args: list[str]) -> tuple[list[str], str | None]:
    from mtlrec.commands.resume_args import CONFIG_DIR_FLAGS, config_dir_arg

    given = config_dir_arg(args)
    rest, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a in CONFIG_DIR_FLAGS:
            skip = True
        elif a.split("=", 1)[0] not in CONFIG_DIR_FLAGS:
            rest.append(a)
    return rest, given


def _with_search_dir(overrides: list[str], config_dir: str) -> str:
    """hydra.searchpath with --config-dir's dir first (as Hydra puts it: before the packaged)."""
    path = f"file://{Path(config_dir).expanduser().absolute()}"
    old = next((o for o in overrides if _override_key(o) == "hydra.searchpath"), None)
    rest = old.split("=", 1)[1].strip().strip("[]") if old else ""
    return f"hydra.searchpath=[{path}{',' + rest if rest else ''}]"


def _key_hint(key: str, overrides: list[str]) -> str:
    """`did you mean 'trainer.lr'? trainer has [...]` for a mistyped override key.

    When the key's parent does not exist either (`trainer.early_stopping.patience`), the hint is
    looked for in the deepest parent that does (`trainer`): `did you mean 'trainer.patience'?`.
    """
    import difflib

    from hydra import compose, initialize_config_module
    from omegaconf import DictConfig, OmegaConf

    try:
        rest = [o for o in overrides if _override_key(o) != key]
        with initialize_config_module(config_module="mtlrec.conf", version_base="1.3"):
            cfg = compose(config_name="train", overrides=rest)
    except Exception:
        cfg = None
    parts = key.split(".")
    leaf, parent, node = parts[-1], "", cfg
    for depth in range(len(parts) - 1, -1, -1):  # the deepest existing parent of the key
        parent = ".".join(parts[:depth])
        node = (OmegaConf.select(cfg, parent) if parent else cfg) if cfg is not None else None
        if isinstance(node, DictConfig):
            break
    keys = sorted(str(k) for k in node) if isinstance(node, DictConfig) else []
    close = difflib.get_close_matches(leaf, keys, n=1)
    hint = f"did you mean '{parent + '.' if parent else ''}{close[0]}'? " if close else ""
    where = f"{parent} has" if parent else "the config has"
    return f"{hint}{where} {keys}; to add a new key use +{key}=..."
