"""A catalogue of bad inputs and faults, each run through the real `mtlrec` command.

    python scripts/bad_inputs.py [--jobs 2] [--only SUBSTRING] [--cases MODULE] [--keep DIR] [--verbose]

Builds a base once (a raw click -> buy log as CSV, a dataset prepared from it, a one-epoch run
on it, a prediction file), then runs every case of scripts/bad_input_catalogue.py in a fresh copy of
that base and sorts the outcome into one of:

- clean one-liner: exit status non-zero, exactly one line on stderr (holding the case's `says`
  text when it names one), no traceback, the protected files unchanged, no temp file left;
- accepted as documented: a case that must succeed (a CSV with a byte-order mark, a dataset
  without checksums: a warning) did, and said what it must;
- traceback: "Traceback (most recent call last)" anywhere in the output;
- silent loss: a bad input accepted (exit 0), a protected file changed (a dataset, a run dir, a
  prediction file), or a half-written file left behind (staging dir, temp file);
- unclear: non-zero exit, but several lines or a line without the expected text.

Prints the table and exits 1 when there is any traceback, silent loss or unclear case.
tests/test_bad_inputs_catalogue.py runs it and asserts exactly that.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bad_input_safety_catalogue  # noqa: E402, F401  (adds its cases to CASES)
from bad_input_cases import Case, build_base  # noqa: E402
from bad_input_catalogue import CASES  # noqa: E402

KINDS = ("clean one-liner", "accepted as documented", "traceback", "silent loss", "unclear")
TEMP_NAMES = re.compile(r"^\..+(\.tmp-\d+-[0-9a-f]+|\.\d+-[0-9a-f]{8}\.tmp|\.predict-\d+-.*\.tmp)$")


@dataclass
class Outcome:
    case: Case
    kind: str
    why: str
    returncode: int
    stderr: str
    seconds: float = 0.0


def env() -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    out.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return out


def mtlrec(args: list[str], cwd: Path, extra_env: dict[str, str] | None = None, timeout: int = 300):
    return subprocess.run(
        [sys.executable, "-m", "mtlrec", *args],
        cwd=cwd,
        env={**env(), **(extra_env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def snapshot(root: Path, rels: tuple[str, ...]) -> dict[str, str]:
    """SHA-256 of every file under the protected paths (a missing path is recorded as such)."""
    out = {}
    for rel in rels:
        path = root / rel
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        if not path.exists():
            out[rel] = "missing"
        for f in files:
            out[str(f.relative_to(root))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def leftovers(root: Path) -> list[str]:
    """Temp files and staging dirs a command left (the names mtlrec gives them)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob(".*") if TEMP_NAMES.match(p.name))


def classify(case: Case, root: Path, out: subprocess.CompletedProcess, before: dict) -> tuple:
    text = out.stdout + out.stderr
    errors = [ln for ln in out.stderr.splitlines() if ln.strip()]
    if "Traceback (most recent call last)" in text:
        return "traceback", "a traceback"
    changed = sorted(k for k, v in snapshot(root, case.protect).items() if before.get(k) != v)
    changed += sorted(k for k in before if k not in snapshot(root, case.protect))
    if changed:
        return "silent loss", f"changed: {changed[:3]}"
    left = leftovers(root)
    if left:
        return "silent loss", f"left behind: {left[:3]}"
    if case.check is not None:
        problem = case.check(root, out)
        if problem:
            return "silent loss", problem
    if case.expect == "ok":
        if out.returncode != 0:
            return "unclear", f"exit {out.returncode}: {errors[-1:]}"
        if case.says and case.says not in text:
            return "unclear", f"exit 0 without saying {case.says!r}"
        return "accepted as documented", ""
    if out.returncode == 0:
        return "silent loss", "accepted (exit 0)"
    if len(errors) != 1:
        return "unclear", f"{len(errors)} lines on stderr"
    if case.says and case.says not in errors[0]:
        return "unclear", f"the line does not say {case.says!r}: {errors[0][:160]}"
    return "clean one-liner", ""


def run_case(case: Case, base: Path, work: Path) -> Outcome:
    root = work / re.sub(r"\W+", "_", case.name)[:60]
    shutil.copytree(base, root, symlinks=True)
    if case.prep is not None:
        case.prep(root)
    before = snapshot(root, case.protect)
    args = [a.replace("{W}", str(root)) for a in case.argv]
    start = time.perf_counter()
    try:
        out = mtlrec(args, root, case.env)
    except subprocess.TimeoutExpired:
        return Outcome(case, "unclear", "timed out", -1, "")
    seconds = time.perf_counter() - start
    kind, why = classify(case, root, out, before)
    if kind in KINDS[:2]:  # disk: a copy of the base per case; failures stay for a look
        shutil.rmtree(root, ignore_errors=True)
    return Outcome(case, kind, why, out.returncode, out.stderr, seconds)


def table(outcomes: list[Outcome]) -> str:
    counts = Counter(o.kind for o in outcomes)
    rows = [("cases tried", len(outcomes))] + [(k, counts.get(k, 0)) for k in KINDS]
    width = max(len(k) for k, _ in rows)
    lines = [f"| {'':{width}} | count |", f"| {'-' * width} | ----- |"]
    lines += [f"| {k:{width}} | {v:5d} |" for k, v in rows]
    return "\n".join(lines)


def run_catalogue(
    jobs: int = 2, only: str | None = None, keep: Path | None = None, module: str | None = None
):
    every = CASES if module is None else importlib.import_module(module).CASES
    cases = [c for c in every if only is None or only in c.name]
    work = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="mtlrec-bad-inputs-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        base = build_base(work / "base", mtlrec)
        with ThreadPoolExecutor(max(1, jobs)) as pool:
            outcomes = list(pool.map(lambda c: run_case(c, base, work / "cases"), cases))
    finally:
        if keep is None:
            shutil.rmtree(work, ignore_errors=True)
    return outcomes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=2, help="cases run at once")
    ap.add_argument("--only", help="run the cases whose name holds this text")
    ap.add_argument("--keep", type=Path, help="work in this dir and keep it")
    ap.add_argument("--cases", help="only the cases of this module, e.g. bad_input_runs_catalogue")
    ap.add_argument("--verbose", action="store_true", help="print every case's line")
    args = ap.parse_args(argv)
    outcomes = run_catalogue(args.jobs, args.only, args.keep, args.cases)
    for o in outcomes:
        if args.verbose or o.kind not in KINDS[:2]:
            line = (o.stderr.strip().splitlines() or [""])[-1]
            print(
                f"[{o.kind}] {o.case.name} ({o.seconds:.1f} s): exit {o.returncode} {o.why} | {line[:200]}"
            )
    print(table(outcomes))
    bad = sum(o.kind in KINDS[2:] for o in outcomes)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["Outcome", "run_catalogue", "table"]
