"""Commands whose arguments another module parses: call it by its "module:function" path."""

from __future__ import annotations

import contextlib
import importlib
import io
import re


def resolve(target: str):
    """ "pkg.module:function" -> the function (imported now, not when mtlrec starts)."""
    module, _, func = target.partition(":")
    return getattr(importlib.import_module(module), func)


def call(target: str, argv: list[str]) -> int:
    """Run `function(argv)`; its return value (None = 0) is the exit status."""
    return int(resolve(target)(list(argv)) or 0)


def help_text(target: str) -> str:
    """What `function(["--help"])` prints (argparse prints it and exits 0)."""
    buf = io.StringIO()
    with contextlib.suppress(SystemExit), contextlib.redirect_stdout(buf):
        resolve(target)(["--help"])
    return buf.getvalue()


def flags_in(text: str) -> list[str]:
    """The option flags (--name, -x) a help text mentions, in order, once each."""
    found = re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", text)
    return list(dict.fromkeys(found))
