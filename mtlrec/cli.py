"""The `mtlrec` command: one CLI, one module per subcommand (mtlrec/commands/<name>.py).

    mtlrec COMMAND [args]               e.g. mtlrec train model=mmoe trainer.epochs=5
    mtlrec help COMMAND                 the same as `mtlrec COMMAND --help`
    mtlrec -V | --version
    mtlrec completion bash              the shell completion script

Exit status, the same for every command: 0 done, 1 an error (ONE line on stderr, no traceback
unless HYDRA_FULL_ERROR=1), 2 a wrong command line, 128 + N when signal N stopped it (130 SIGINT,
141 the reading end of a pipe closed, e.g. `mtlrec compare ... | head -1`, 143 SIGTERM).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Sequence
from types import ModuleType

from mtlrec.commands import COMMANDS, ERROR, OK, SIGNAL_BASE, USAGE, CommandParser, load
from mtlrec.commands.pipes import PipeGuard
from mtlrec.commands.train import check_overrides, translate_resume

__all__ = ["COMMANDS", "check_overrides", "main", "translate_resume"]

EPILOG = """\
`mtlrec help COMMAND` (or `mtlrec COMMAND --help`) shows a command's arguments.
exit status: 0 ok, 1 error, 2 wrong command line, 130 SIGINT, 141 closed pipe, 143 SIGTERM."""


class Stopped(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived while no training loop was listening (start-up, evaluation...)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stopped(signum: int, frame: object) -> None:
    raise Stopped(signum)


def install_signal_handlers() -> dict:
    """From the first moment, SIGINT and SIGTERM end mtlrec with one line and exit 130/143.

    Without this, a SIGTERM during the first seconds (imports, config composition, before the
    training loop installs its graceful-stop handlers) kills the process with no message and a
    raw status -15. A disposition that is not the default (SIG_IGN set by whoever started
    mtlrec, e.g. SIGINT in a script's background job) is left as it is. Returns what it
    replaced.
    """
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(signum) in (signal.SIG_DFL, signal.default_int_handler):
            previous[signum] = signal.signal(signum, _raise_stopped)
    return previous


def build_parser() -> tuple[CommandParser, dict[str, CommandParser]]:
    """The top-level parser and one subparser per command."""
    from mtlrec import __version__

    parser = CommandParser(
        prog="mtlrec",
        description="Config-driven experiments with multi-task recommendation models.",
        epilog=EPILOG,
        formatter_class=_Formatter,
    )
    parser.add_argument("-V", "--version", action="version", version=f"mtlrec {__version__}")
    sub = parser.add_subparsers(
        dest="command", metavar="COMMAND", parser_class=CommandParser, title="commands"
    )
    parsers: dict[str, CommandParser] = {}
    for name in COMMANDS:
        module = load(name)
        parsers[name] = sub.add_parser(
            name,
            help=module.SUMMARY,
            description=(module.__doc__ or "").strip().splitlines()[0],
            epilog=getattr(module, "EPILOG", None),
            add_help=not module.FORWARDS,
            formatter_class=_Formatter,
        )
        module.configure(parsers[name])
    sub.add_parser("help", help="a command's arguments: `mtlrec help COMMAND`")
    return parser, parsers


def _Formatter(prog: str):
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=16, width=100)


def run(argv: Sequence[str]) -> int:
    """Parse the command line, run the command, return the exit status."""
    argv = list(argv)
    if argv[:1] in (["-sc"], ["--shell-completion"]):
        from mtlrec.commands import completion, train

        if argv[1:2] == ["query=bash"]:  # asked by the completion script on every <Tab>
            return completion.answer(os.environ.get("COMP_LINE", "mtlrec "), _comp_point())
        return train.run(argv)  # install=bash, uninstall=bash, ...: Hydra's own business
    parser, parsers = build_parser()
    at = next((i for i, a in enumerate(argv) if not a.startswith("-")), len(argv))
    parser.parse_args(argv[:at])  # -h, -V, or a wrong option (exit 2)
    if at == len(argv):
        parser.print_usage(sys.stderr)
        return USAGE
    name, rest = argv[at], argv[at + 1 :]
    if name == "help":
        return show_help(parser, parsers, rest)
    if name not in COMMANDS:
        return unknown_command(name)
    module = load(name)
    args = rest if module.FORWARDS else parse(module, parsers[name], rest)
    try:
        return int(module.run(args) or OK)
    except Exception as e:
        if not _user_error(e) or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"mtlrec {name}: error: {e}", file=sys.stderr)
        return USAGE if _usage_error(e) else ERROR


def parse(module: ModuleType, parser: CommandParser, rest: list[str]) -> argparse.Namespace:
    """The command's arguments; INTERMIXED commands take positionals before and after flags."""
    if getattr(module, "INTERMIXED", False):
        return parser.parse_intermixed_args(rest)
    return parser.parse_args(rest)


def show_help(parser: CommandParser, parsers: dict[str, CommandParser], rest: list[str]) -> int:
    if not rest:
        parser.print_help()
        return OK
    name = rest[0]
    if name not in COMMANDS:
        return unknown_command(name)
    module = load(name)
    if module.FORWARDS:  # Hydra's help for train
        return int(module.run(["--help"]) or OK)
    parsers[name].print_help()
    return OK


def unknown_command(name: str) -> int:
    import difflib

    close = difflib.get_close_matches(name, list(COMMANDS), n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    print(
        f"mtlrec: unknown command '{name}'; {hint}commands: {', '.join(COMMANDS)} "
        "(see `mtlrec --help`)",
        file=sys.stderr,
    )
    return USAGE


def _user_error(e: BaseException) -> bool:
    from mtlrec.errors import MtlrecError  # imported only when something went wrong

    return isinstance(e, MtlrecError)


def _usage_error(e: BaseException) -> bool:
    from mtlrec.errors import UsageError

    return isinstance(e, UsageError)


def _comp_point() -> int | None:
    point = os.environ.get("COMP_POINT", "")
    return int(point) if point.isdigit() else None


STOP_CODES = (SIGNAL_BASE + signal.SIGINT, SIGNAL_BASE + signal.SIGTERM)


def main(argv: Sequence[str] | None = None) -> None:
    # Small models on few cores: OpenMP's default busy-wait makes threads spin against each other
    # and against parallel jobs (up to ~26x slower with 2 threads when the other core is busy).
    # Must be set before torch loads; users can still override it.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    replaced = install_signal_handlers()
    guard = PipeGuard(sys.stdout)
    sys.stdout = guard  # type: ignore[assignment]
    try:
        code = _main(sys.argv[1:] if argv is None else argv)
        guard.flush()  # here, so that a closed pipe is seen while we can still handle it
    finally:
        sys.stdout = guard.stream
        for signum, handler in replaced.items():  # a caller in the same process gets its own back
            signal.signal(signum, handler)
    if code in STOP_CODES and threading.current_thread() is threading.main_thread():
        # Stopping on a signal: one more Ctrl-C / SIGTERM while the process ends (exit handlers)
        # must not turn 130/143 into a raw -2/-15.
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)
    if guard.broken and code == OK:
        code = SIGNAL_BASE + signal.SIGPIPE
    sys.exit(code)


def _main(argv: Sequence[str]) -> int:
    try:
        return run(argv)
    except SystemExit as e:  # Hydra and argparse end with sys.exit
        return exit_status(e)
    except KeyboardInterrupt as e:  # Ctrl-C / SIGTERM outside a training loop
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        signum = getattr(e, "signum", signal.SIGINT)
        print(f"mtlrec: interrupted ({signal.Signals(signum).name})", file=sys.stderr)
        return SIGNAL_BASE + signum


def exit_status(e: SystemExit) -> int:
    """SystemExit -> status. A run stopped by signals exits 128 + the LAST signal it got (a
    second SIGTERM stops at once; the run reports 130 for that, the shell convention is 143)."""
    if e.code is None:
        return OK
    if not isinstance(e.code, int):
        print(e.code, file=sys.stderr)
        return ERROR
    stops = sys.modules.get("mtlrec.training.signals")
    last = stops.last_received() if stops is not None else None
    if e.code == SIGNAL_BASE + signal.SIGINT and last is not None:
        return SIGNAL_BASE + last
    return e.code


if __name__ == "__main__":
    main()
