"""`mtlrec completion [bash|zsh]`: the shell completion script, and the answers it asks for.

The script is Hydra's (the same as `mtlrec train -sc install=bash`). On every <Tab> it runs
`mtlrec -sc query=bash` with the command line in $COMP_LINE; `query` answers that for every
command: command names, each command's flags, and for `mtlrec train ...` Hydra's own answer
(config groups, options, keys). File names come from the shell (the script's `-o default`).

    eval "$(mtlrec completion bash)"      # in ~/.bashrc to keep it
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterator

from mtlrec.commands import COMMANDS, FORWARDS_HELP, OK, load

SUMMARY = 'shell completion script: eval "$(mtlrec completion bash)"'
FORWARDS = False
TOP_FLAGS = ["-h", "--help", "-V", "--version"]


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("shell", nargs="?", default="bash", choices=["bash", "zsh"])


def run(args: argparse.Namespace) -> int:
    from mtlrec.commands import train

    return train.run(["-sc", f"install={args.shell}"])


def answer(comp_line: str, comp_point: int | None = None) -> int:
    """Print the candidates for the word under the cursor of `comp_line` (what the script asks)."""
    line = comp_line[: len(comp_line) if comp_point is None else comp_point]
    words = line.split()
    if len(words) >= 2 and words[1] == "train" and (len(words) > 2 or line.endswith(" ")):
        from mtlrec.commands import train

        # Hydra answers for train's overrides: the line it sees is `mtlrec <train's arguments>`.
        rest = line.split(None, 2)[2] if len(words) > 2 else ""
        hydra_line = f"mtlrec {rest}"
        with _environ(COMP_LINE=hydra_line, COMP_POINT=str(len(hydra_line))):
            return train.run(["-sc", "query=bash"])
    print(" ".join(candidates(words, line.endswith(" ") or not words)))
    return OK


@contextlib.contextmanager
def _environ(**values: str) -> Iterator[None]:
    """os.environ with `values` set (Hydra's query reads them there), then as it was: a process
    that answers and goes on (a test session) keeps its own COMP_LINE/COMP_POINT."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def candidates(words: list[str], new_word: bool) -> list[str]:
    """Command names after `mtlrec`, command names after `mtlrec help`, else the command's flags."""
    done = words[1:] if new_word else words[1:-1]
    if not done:
        return [*COMMANDS, "help", *TOP_FLAGS]
    name = done[0]
    if name == "help":
        return list(COMMANDS) if len(done) == 1 else []
    if name not in COMMANDS:
        return []
    return command_flags(name)


def command_flags(name: str) -> list[str]:
    """Every option flag of command `name` (from its parser; --help for `train`, Hydra's)."""
    module = load(name)
    if module.FORWARDS:
        return list(FORWARDS_HELP)
    parser = argparse.ArgumentParser(add_help=True)
    module.configure(parser)
    return [s for action in parser._actions for s in action.option_strings]
