"""`mtlrec fuse` / `predict --fusion` / `export --fusion` through the real command, on the
two-task data whose best fusion is known by construction (tests/helpers/fusion.py)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from helpers.fusion import cli


def in_process(capsys, *args: str) -> tuple[int, str]:
    """The command's status and stderr, run in this process (the same parser and error path as
    the `mtlrec` script, without a new interpreter's start-up)."""
    from mtlrec.cli import run

    capsys.readouterr()
    code = run(list(args))
    return code, capsys.readouterr().err


def record(run, name):
    return json.loads((run / "fusion" / f"{name}.json").read_text())


def test_the_searched_weights_find_the_known_optimum(two_task_run, capsys):
    run = two_task_run
    # utility = click + 10 x conversion: the expected utility p_click + 10 p_conv ranks best.
    done = cli(
        "fuse", str(run), "--form", "sum", "--trials", "40", "--seed", "0", "--name", "conv",
        "--utility", "click=1,conversion=10", cwd=run.parent,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    conv = record(run, "conv")
    assert conv["weight_shares"]["conv"] > 0.75  # the optimum: 10/11 of the weight
    assert conv["val"] >= max(conv["baselines"][t]["val"] for t in ("ctr", "conv", "equal_sum"))
    assert conv["target"] == {
        "metric": "utility_auc",
        "utility": {"click": 1.0, "conversion": 10.0},
    }
    assert conv["command"].startswith(f"mtlrec fuse {run} --form sum")
    assert len(conv["trials"]) == 40 and conv["checkpoint"] == "best.pt"
    assert "conv" in done.stdout and "utility_auc" in done.stdout
    # The other way round, on a grid: the weight moves to click.
    code, err = in_process(
        capsys, "fuse", str(run), "--form", "sum", "--search", "grid", "--grid-steps", "11",
        "--name", "click", "--utility", "click=10,conversion=1", "--no-plot",
    )  # fmt: skip
    assert code == 0, err
    click = record(run, "click")
    assert len(click["trials"]) == 11 * 11 - 1
    assert click["weight_shares"]["ctr"] > 0.6 > conv["weight_shares"]["ctr"]
    # Same seed, same search: the record is reproducible; an existing name is never replaced.
    code, err = in_process(capsys, "fuse", str(run), "--trials", "4", "--name", "conv")
    assert code == 1
    assert err.strip().endswith(
        "already exists; fusion results are never replaced: pass another --name"
    )
    code, err = in_process(
        capsys, "fuse", str(run), "--form", "sum", "--trials", "40", "--seed", "0", "--name",
        "conv2", "--utility", "click=1,conversion=10", "--no-plot",
    )  # fmt: skip
    assert code == 0, err
    assert record(run, "conv2")["weights"] == conv["weights"]


def test_predict_fusion_is_the_formula_and_the_export_equals_predict(two_task_run, capsys):
    pytest.importorskip("onnxruntime")
    run = two_task_run
    code, err = in_process(capsys, "fuse", str(run), "--form", "product,logit_sum", "--trials",
                           "15", "--name", "p", "--no-plot")  # fmt: skip
    assert code == 0, err
    rec = record(run, "p")
    assert set(rec["forms"]) == {"product", "logit_sum"}
    assert rec["val"] == max(f["val"] for f in rec["forms"].values())
    test_file = run.parent / "data" / "test.parquet"
    out = run.parent / "scored.parquet"
    done = cli("predict", str(run), "--input", str(test_file), "--output", str(out),
               "--fusion", "p", cwd=run.parent)  # fmt: skip
    assert done.returncode == 0, done.stderr
    df = pd.read_parquet(out)
    assert list(df.columns) == ["ctr", "conv", "score"]
    w = rec["weights"]
    q = {t: np.clip(df[t].to_numpy(np.float64), 1e-7, 1 - 1e-7) for t in w}
    if rec["form"] == "product":
        expected = np.exp(sum(w[t] * np.log(q[t]) for t in w))
    else:
        expected = sum(w[t] * np.log(q[t] / (1 - q[t])) for t in w)
    np.testing.assert_allclose(df["score"], expected, rtol=1e-5, atol=1e-6)
    # The exported model outputs the same columns, the fused score last.
    spec = json.loads((run.parent / "data" / "spec.json").read_text())
    ids = np.stack(
        [pd.read_parquet(test_file)[f["name"]].to_numpy() for f in spec["features"]], axis=1
    ).astype(np.int64)
    for fmt in ("torchscript", "onnx"):
        dest = run.parent / f"export-{fmt}"
        code, err = in_process(capsys, "export", str(run), "--format", fmt, "--fusion", "p",
                               "--output", str(dest))  # fmt: skip
        assert code == 0, err
        info = json.loads((dest / "export.json").read_text())
        assert info["outputs"]["columns"] == ["ctr", "conv", "score"]
        assert info["fusion"]["weights"] == w
        dense = np.zeros((len(ids), 0), dtype=np.float32)
        if fmt == "torchscript":
            model = torch.jit.load(str(dest / "model.pt"))
            with torch.no_grad():
                out = model(torch.from_numpy(ids), torch.from_numpy(dense))
            got = np.stack([out[c].numpy() for c in ["ctr", "conv", "score"]], 1)
        else:
            import onnxruntime as ort

            session = ort.InferenceSession(
                str(dest / "model.onnx"), providers=["CPUExecutionProvider"]
            )
            got = np.stack(
                session.run(["ctr", "conv", "score"], {"sparse_ids": ids, "dense": dense}), 1
            )
        np.testing.assert_allclose(
            got, df[["ctr", "conv", "score"]].to_numpy(), rtol=1e-5, atol=1e-6
        )


def test_a_fusion_is_refused_on_other_weights_and_bad_arguments_are_one_line(two_task_run, capsys):
    run = two_task_run
    code, err = in_process(capsys, "fuse", str(run), "--trials", "3", "--name", "l", "--no-plot")
    assert code == 0, err
    out = run.parent / "never.parquet"
    test_file = run.parent / "data" / "test.parquet"
    code, err = in_process(capsys, "predict", str(run), "--input", str(test_file), "--output",
                           str(out), "--fusion", "l", "--checkpoint", "last.pt")  # fmt: skip
    assert code == 1 and not out.exists()
    assert err.startswith(
        f"mtlrec predict: error: {run / 'fusion' / 'l.json'}: its weights were searched on the "
        f"predictions of best.pt as it was then, not of {run / 'checkpoints' / 'last.pt'}"
    )
    cases = {
        ("--utility", "clicks=1"): "--utility clicks=1: 'clicks' is not a label of dataset",
        ("--metric", "gauc"): "--metric gauc needs --group-by FIELD",
        ("--metric", "task_auc", "--task", "nope"): "--task nope: not a task or label of dataset",
        ("--tasks", "ctr"): "fusion needs at least 2 binary task outputs",
    }
    for args, line in cases.items():
        code, err = in_process(capsys, "fuse", str(run), "--name", "x", *args)
        assert code == 1, args
        assert len(err.strip().splitlines()) == 1 and line in err, err
    assert not (run / "fusion" / "x.json").exists()


def test_gauc_ndcg_and_a_constrained_task_auc_target(two_task_run, capsys):
    run = two_task_run
    code, err = in_process(capsys, "fuse", str(run), "--metric", "ndcg", "--group-by", "user",
                           "--k", "5", "--trials", "5", "--name", "n", "--no-plot")  # fmt: skip
    assert code == 0, err
    assert record(run, "n")["target"]["metric"] == "ndcg@5"
    code, err = in_process(capsys, "fuse", str(run), "--metric", "gauc", "--group-by", "user",
                           "--trials", "5", "--name", "g", "--no-plot")  # fmt: skip
    assert code == 0, err
    gauc = record(run, "g")
    assert gauc["target"]["group_by"] == "user" and 0.5 < gauc["val"] <= 1
    code, err = in_process(capsys, "fuse", str(run), "--metric", "task_auc", "--task", "conv",
                           "--constraint", "ctr=0.9", "--search", "grid", "--grid-steps", "5",
                           "--name", "c", "--no-plot")  # fmt: skip
    assert code == 0, err
    rec = record(run, "c")
    best = next(t for t in rec["trials"] if t["weights"] == list(rec["weights"].values()))
    assert best["feasible"] and best["constraint_value"] >= rec["constraint"]["val"]["floor"]
    feasible = [t["value"] for t in rec["trials"] if t["feasible"]]
    assert rec["val"] == max(feasible)
    assert any(not t["feasible"] for t in rec["trials"])  # all weight on conv breaks it
