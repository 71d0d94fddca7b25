"""`python -m mtlrec ...` is the same as the `mtlrec` command."""

from mtlrec.cli import main

if __name__ == "__main__":
    main()
