"""`mtlrec export RUN_DIR --format torchscript|onnx [--output DIR]`: a standalone model file, the
dataset's encoders next to it and export.json (input layout, SHA-256 of every file);
`mtlrec export --verify EXPORT_DIR` checks an export someone sent you before you use it."""

from __future__ import annotations

import argparse

from mtlrec.commands import OK
from mtlrec.commands.evaluate import BEST

SUMMARY = "a standalone TorchScript/ONNX model, checked within 1e-5 (RUN_DIR --format F)"
FORWARDS = False


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", nargs="?")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--format", choices=["torchscript", "onnx"])
    what.add_argument(
        "--verify",
        metavar="EXPORT_DIR",
        help="check an export dir's files against export.json's SHA-256 and score sample rows",
    )
    p.add_argument("--output", default=None, help="directory to write (default RUN_DIR/export)")
    p.add_argument(
        "--checkpoint",
        default=BEST,
        help="file in RUN_DIR/checkpoints: best.pt, last.pt, best_<task> (keep_best_per_task)",
    )
    p.add_argument(
        "--fusion",
        nargs="?",
        const="fusion",
        metavar="NAME",
        help="the model also outputs the fused `score` of RUN/fusion/NAME.json (mtlrec fuse)",
    )
    p.add_argument("--sample-rows", type=int, default=1024, help="rows of the equivalence check")
    p.set_defaults(parser=p)


def run(args: argparse.Namespace) -> int:
    from mtlrec.inference import EXPORT_TOLERANCE, export, verify_and_score

    if args.verify:
        if args.run_dir is not None:
            args.parser.error("--verify EXPORT_DIR takes no RUN_DIR")
        files, rows, models = verify_and_score(args.verify, args.sample_rows)
        scored = (
            f"the model {models[0]} scores"
            if len(models) == 1
            else (f"the models {' and '.join(models)} each score")
        )
        print(
            f"{args.verify}: {files} files match export.json's SHA-256; {scored} {rows:,} sample rows: OK"
        )
        return OK
    if args.run_dir is None:
        args.parser.error("the following arguments are required: RUN_DIR")
    result = export(
        args.run_dir, args.format, args.output, args.checkpoint, args.sample_rows, args.fusion
    )
    kept = "".join(f" (kept {k}: the same checkpoint's)" for k in result["kept"])
    print(f"wrote {result['model_file']} and {result['spec_file']}{kept}")
    out_dir = result["model_file"].parent
    print(f"{out_dir / 'export.json'}: SHA-256 of {', '.join(result['files'])}")
    print(
        f"check: {args.format} vs PyTorch on {result['sample_rows']:,} sample rows: max |diff| "
        f"{result['max_abs_diff']:.2e} <= {EXPORT_TOLERANCE:g}: OK"
    )
    return OK
