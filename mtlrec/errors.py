"""The one exception type for mistakes a user can make (bad config, bad data, missing file).

It derives from Hydra's CompactHydraException so that, inside `mtlrec train`, Hydra prints just
the message (one line, no traceback unless HYDRA_FULL_ERROR=1) and exits with status 1. The
plain-argparse subcommands catch it in `mtlrec.cli` and do the same.
"""

from hydra.errors import CompactHydraException


class MtlrecError(CompactHydraException):
    """A user-facing error: its message names the file/column/key/value and what to do."""
