"""The shape of the `mtlrec` command: help, version, exit statuses, pipes, completion, start-up
imports. Everything through real processes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.cli import env, lines, mtlrec
from mtlrec import __version__
from mtlrec.commands import COMMANDS
from mtlrec.models import MODELS


def test_help_lists_every_command_and_help_cmd_equals_cmd_dash_dash_help(tmp_path):
    top = mtlrec("--help", cwd=tmp_path)
    assert top.returncode == 0 and top.stderr == ""
    for name in COMMANDS:
        assert f"\n    {name}  " in top.stdout, name
    assert list(COMMANDS) == [
        "train",
        "prepare",
        "compare",
        "evaluate",
        "predict",
        "export",
        "fuse",
        "calibrate",
        "tune",
        "completion",
    ]
    for name in (
        "evaluate",
        "predict",
        "export",
        "fuse",
        "calibrate",
        "compare",
        "prepare",
        "tune",
        "completion",
    ):
        via_help = mtlrec("help", name, cwd=tmp_path)
        direct = mtlrec(name, "--help", cwd=tmp_path)
        assert via_help.returncode == direct.returncode == 0, via_help.stderr
        assert via_help.stdout == direct.stdout and f"usage: mtlrec {name}" in direct.stdout
    train = mtlrec("help", "train", cwd=tmp_path)
    assert train.returncode == 0 and "== Configuration groups ==" in train.stdout
    assert f"model: {', '.join(sorted(MODELS))}" in train.stdout


def test_version_both_spellings(tmp_path):
    for flag in ("-V", "--version"):
        out = mtlrec(flag, cwd=tmp_path)
        assert (out.returncode, out.stdout, out.stderr) == (0, f"mtlrec {__version__}\n", "")


@pytest.mark.parametrize(
    ("args", "line"),
    [
        ([], "usage: mtlrec [-h] [-V] COMMAND ..."),
        (["--frob"], "mtlrec: error: unrecognized arguments: --frob (see `mtlrec --help`)"),
        (
            ["evaluat"],
            "mtlrec: unknown command 'evaluat'; did you mean 'evaluate'? commands: train, "
            "prepare, compare, evaluate, predict, export, fuse, calibrate, tune, completion (see `mtlrec --help`)",
        ),
        (["help", "nope"], None),
        (
            ["predict", "RUN"],
            "mtlrec predict: error: the following arguments are required: --input, --output "
            "(see `mtlrec predict --help`)",
        ),
        (
            ["export", "RUN", "--format", "tflite"],
            "mtlrec export: error: argument --format: invalid choice: 'tflite' (choose from "
            "'torchscript', 'onnx') (see `mtlrec export --help`)",
        ),
    ],
)
def test_a_wrong_command_line_is_one_line_and_exit_2(tmp_path, args, line):
    out = mtlrec(*args, cwd=tmp_path)
    assert out.returncode == 2 and out.stdout == ""
    assert len(lines(out.stderr)) == 1, out.stderr
    if line is not None:
        assert out.stderr.strip() == line


def test_an_error_is_one_line_and_exit_1(tmp_path):
    out = mtlrec("evaluate", str(tmp_path / "nowhere"), cwd=tmp_path)
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr == f"mtlrec evaluate: error: {tmp_path / 'nowhere'}: no such run dir\n"


def _imported_after(argv: list[str], tmp_path: Path) -> list[str]:
    """The heavy modules in sys.modules after `mtlrec ARGV` ran in a fresh interpreter."""
    code = (
        "import sys\nfrom mtlrec.cli import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
        "heavy = ('torch', 'sklearn', 'pandas', 'pyarrow', 'numpy', 'matplotlib')\n"
        "print(sorted(m for m in heavy if m in sys.modules), file=sys.stderr)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env(), capture_output=True, text=True
    )
    return out.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["-V"], ["help", "evaluate"], ["predict", "--help"], ["compare", "--help"]],
)
def test_help_imports_no_torch_sklearn_pandas(tmp_path, argv):
    assert _imported_after(argv, tmp_path) == "[]"


def test_the_parser_alone_imports_nothing_heavy(tmp_path):
    code = (
        "import sys\nfrom mtlrec.cli import build_parser\nbuild_parser()\n"
        "print(sorted(m for m in ('torch', 'sklearn', 'pandas', 'pyarrow', 'hydra') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env())
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr


def test_output_into_a_closed_pipe_ends_quietly_with_141(tmp_path):
    """The reader went away before mtlrec wrote (the end state of `mtlrec ... | head -1`)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        out = subprocess.run(
            [sys.executable, "-m", "mtlrec", "--help"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            env=env(),
            cwd=tmp_path,
        )
    finally:
        os.close(write_end)
    assert (out.returncode, out.stderr) == (141, "")


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_help_into_head_through_a_real_shell_pipe(tmp_path):
    out = subprocess.run(
        ["bash", "-c", "set -o pipefail; python -m mtlrec train --cfg job | head -1"],
        capture_output=True,
        text=True,
        env=env(PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}"),
        cwd=tmp_path,
    )
    assert out.stdout == "model:\n" and "Traceback" not in out.stderr
    assert out.returncode in (0, 141)  # 0 when all output fit the pipe before head left


# -- shell completion ------------------------------------------------------------------------------
COMPLETE = r"""
eval "$(mtlrec completion bash)"
complete_line() {
    COMP_LINE="$1"; COMP_POINT=${#1}
    read -r -a COMP_WORDS <<< "$1"
    COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))
    [[ "$1" == *" " ]] && COMP_CWORD=${#COMP_WORDS[@]}
    COMPREPLY=()
    hydra_bash_completion
    echo "${COMPREPLY[*]}"
}
"""


def _complete(tmp_path: Path, *lines_: str) -> list[str]:
    script = COMPLETE + "".join(f"complete_line {line!r}\n" for line in lines_)
    path = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    out = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, env=env(PATH=path), cwd=tmp_path
    )
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    return out.stdout.splitlines()


@pytest.mark.skipif(
    shutil.which("bash") is None or shutil.which("mtlrec") is None,
    reason="needs bash and the installed mtlrec script",
)
def test_bash_completion_completes_commands_flags_and_train_overrides(tmp_path):
    got = _complete(
        tmp_path,
        "mtlrec tr",
        "mtlrec train model=mm",
        "mtlrec train trainer.epo",
        "mtlrec compare --so",
        "mtlrec predict run --ov",
        "mtlrec help ev",
    )
    assert got == ["train", "model=mmoe", "trainer.epochs=", "--sort", "--overwrite", "evaluate"]


def test_sc_reaches_hydra(tmp_path):
    """`mtlrec train -sc install=bash` is Hydra's own script, for the program `mtlrec`."""
    out = mtlrec("train", "-sc", "install=bash", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.rstrip().endswith(
        "complete -o nospace -o default -F hydra_bash_completion mtlrec"
    )
    assert "unknown command" not in out.stderr
    assert mtlrec("completion", "bash", cwd=tmp_path).stdout == out.stdout
    assert mtlrec("-sc", "install=bash", cwd=tmp_path).stdout == out.stdout
    query = mtlrec("-sc", "query=bash", cwd=tmp_path, env=env(COMP_LINE="mtlrec train dataset="))
    assert query.returncode == 0
    assert (
        "dataset=synthetic_ccp" in query.stdout.split() and "dataset=census" in query.stdout.split()
    )


def test_a_completion_answer_leaves_the_process_environment_as_it_was(monkeypatch, capsys):
    """`answer` hands Hydra the train line through COMP_LINE/COMP_POINT in os.environ, then puts
    them back: a process that answers and goes on keeps its own (none here)."""
    from mtlrec.commands.completion import answer

    monkeypatch.delenv("COMP_POINT", raising=False)
    monkeypatch.setenv("COMP_LINE", "the caller's")
    assert answer("mtlrec train dataset=") == 0
    assert "dataset=census" in capsys.readouterr().out.split()  # Hydra read the train line
    assert (os.environ["COMP_LINE"], os.environ.get("COMP_POINT")) == ("the caller's", None)


def test_main_in_process_gives_the_callers_signal_handlers_back():
    code = (
        "import signal\nfrom mtlrec.cli import main\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "signal.signal(signal.SIGTERM, signal.SIG_DFL)\n"
        "try:\n    main(['-V'])\nexcept SystemExit as e:\n    print('exit', e.code)\n"
        "print(signal.getsignal(signal.SIGINT) is signal.default_int_handler,"
        " signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env())
    assert out.stdout == f"mtlrec {__version__}\nexit 0\nTrue True\n", out.stderr
