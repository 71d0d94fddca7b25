"""One line for an override Hydra's grammar cannot read (used by `mtlrec train` and `prepare`).

Hydra reports these as a lexer error over several lines (`LexerNoViableAltException: ...` with a
caret). The common cause: a value with spaces or non-ASCII letters, which the grammar reads only
quoted, e.g. hydra.run.dir='/data/runs/über 1' (in a shell: "hydra.run.dir='/data/runs/über 1'").
"""

from __future__ import annotations

from collections.abc import Iterable


def unparsable_override(overrides: Iterable[str]) -> str | None:
    """The message for the first override Hydra's grammar cannot parse because of spaces or
    non-ASCII characters in its value, or None."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for arg in overrides:
        if arg.startswith("-") or "=" not in arg:
            continue
        try:
            parser.parse_override(arg)
        except Exception:  # the grammar raises HydraException / lexer errors for one override
            key, _, value = arg.partition("=")
            odd = sorted({c for c in value if c.isspace() or not c.isascii()})
            if not odd:  # brackets, quotes...: the caller's own line says what is wrong
                continue
            shown = "".join(odd)
            return (
                f"cannot parse the override {arg!r}: its value holds {shown!r}, which Hydra reads "
                f"only quoted; quote the value: {key}='{value}' (in a shell: \"{key}='{value}'\")"
            )
    return None
