"""The argument steps of `mtlrec train` around a resume: where the run's configs came from
(`--config-dir DIR`, `hydra.searchpath=[file://DIR]`), a run with no checkpoint yet, a sweep dir.

A run on your own data composes its config from your config dir. Hydra records that dir in the
run's .hydra/hydra.yaml (`hydra.runtime.config_sources`, `hydra.overrides.hydra`); a resume
replays it, so `mtlrec train resume=RUN_DIR` (the command the interruption message prints)
works as it is, from any working dir.
"""

from __future__ import annotations

from pathlib import Path

CONFIG_DIR_FLAGS = ("--config-dir", "-cd")


def _key(arg: str) -> str:
    return arg.split("=", 1)[0].lstrip("+~")


def config_dir_arg(args: list[str]) -> str | None:
    """The value of `--config-dir DIR` / `--config-dir=DIR` / `-cd DIR` (the last one given)."""
    found = None
    for i, a in enumerate(args):
        if a in CONFIG_DIR_FLAGS and i + 1 < len(args):
            found = args[i + 1]
        elif a.split("=", 1)[0] in CONFIG_DIR_FLAGS and "=" in a:
            found = a.split("=", 1)[1]
    return found


def check_config_dir(args: list[str]) -> None:
    """A mistyped --config-dir is one line (Hydra would print its search path over many)."""
    given = config_dir_arg(args)
    if given is None:
        return
    path = Path(given).expanduser()
    if not path.exists():
        raise ValueError(
            f"--config-dir {given}: no such directory ({path.absolute()}); give the dir that "
            "holds your dataset/, model/, ... configs"
        )
    if not path.is_dir():
        raise ValueError(
            f"--config-dir {given}: is a file, not a directory; give the dir that holds your "
            "dataset/, model/, ... configs (e.g. my_conf, not my_conf/dataset/my_data.yaml)"
        )


def _absolute_searchpath(override: str, cwd: Path) -> str:
    """hydra.searchpath=[file://my_conf,pkg://x] with file:// paths made absolute against cwd."""
    key, _, value = override.partition("=")
    items = [v.strip().strip("'\"") for v in value.strip().strip("[]").split(",") if v.strip()]
    out = []
    for item in items:
        if item.startswith("file://"):
            path = Path(item[len("file://") :]).expanduser()
            item = f"file://{path if path.is_absolute() else (cwd / path)}"
        out.append(item)
    return f"{key}=[{','.join(out)}]"


def config_sources(hydra_yaml: Path, mine: list[str]) -> list[str]:
    """The arguments that give a resume the config dirs the run started with (none for a run
    on the packaged configs only). Yours win: a --config-dir or hydra.searchpath you give."""
    if not hydra_yaml.is_file():
        return []
    import yaml

    hydra = (yaml.safe_load(hydra_yaml.read_text()) or {}).get("hydra") or {}
    runtime = hydra.get("runtime") or {}
    cwd = Path(str(runtime.get("cwd") or "."))
    out: list[str] = []
    if config_dir_arg(mine) is None:
        for source in runtime.get("config_sources") or []:
            if source.get("provider") == "command-line" and source.get("schema") == "file":
                path = Path(str(source["path"]))
                out += ["--config-dir", str(path if path.is_absolute() else cwd / path)]
    if not any(_key(a) == "hydra.searchpath" for a in mine):
        for o in (hydra.get("overrides") or {}).get("hydra") or []:
            if _key(str(o)) == "hydra.searchpath":
                out.append(_absolute_searchpath(str(o), cwd))
    return out


def checkpoint_problem(run_dir: Path) -> str | None:
    from mtlrec.runs.resume import checkpoint_problem as problem

    return problem(run_dir)


def _resume_value(args: list[str]) -> str | None:
    given = [a for a in args if _key(a) == "resume"]
    if not given:
        return None
    value = given[-1].split("=", 1)[1].strip().strip("'\"")
    return None if value in ("", "null") else value


def start_over_without_checkpoint(args: list[str]) -> list[str]:
    """A resume of a run killed before its first checkpoint starts that run again, in its dir,
    with its config (there is nothing to continue from, and nothing to lose)."""
    from mtlrec.runs.records import holds_a_run
    from mtlrec.runs.resume import has_checkpoint

    value = _resume_value(args)
    if value is None:
        return args
    run_dir = Path(value)
    if has_checkpoint(run_dir) or holds_a_run(run_dir):
        return args
    # (the run dir guard says so when it starts the run again)
    return [a for a in args if _key(a) not in ("resume", "hydra.output_subdir")]


def is_sweep_dir_resume(args: list[str]) -> bool:
    """`resume=DIR` where DIR is a sweep dir (Hydra's multirun.yaml, no run of its own)."""
    value = _resume_value(args)
    if value is None:
        return False
    path = Path(value).expanduser()
    return (path / "multirun.yaml").is_file() and not (path / ".hydra").is_dir()
