"""bench.py's peers: DeepCTR-Torch 0.3.0 and torch-rechub 0.9.0, each installed on first use into
its own venv (.bench/venvs/<peer>: torch first, then the pinned peer), and their workers, which run
in that venv with the same data, architecture and timing as bench_workers.py's.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from bench_common import timed
from bench_workers import BATCH, EVAL_BATCH, EVAL_REPEATS, LR, aucs_of, load_arrays, speeds

PEERS = {
    # name -> (pip requirement, extra undeclared runtime dependencies, import name)
    "deepctr-torch": ("deepctr-torch==0.3.0", ["requests"], "deepctr_torch"),
    "torch-rechub": ("torch-rechub==0.9.0", [], "torch_rechub"),
}
TORCH_PIN = "torch==2.13.0"


def ensure_peer(name: str, venvs: Path, install: bool) -> tuple[Path | None, str]:
    """(python of the peer's venv, "") or (None, why it is skipped)."""
    req, extra, module = PEERS[name]
    py = venvs / name / "bin" / "python"
    check = [str(py), "-c", f"import {module}"]
    if py.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return py, ""
    if not install:
        return None, f"not installed in {venvs / name} (run without --no-install)"
    print(f"installing {name} into {venvs / name} ({TORCH_PIN} first, then {req}) ...", flush=True)
    steps = [
        [sys.executable, "-m", "venv", str(venvs / name)],
        [str(py), "-m", "pip", "install", "-q", TORCH_PIN],
        [str(py), "-m", "pip", "install", "-q", req, *extra],
    ]
    for cmd in steps:
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            last = (r.stderr.strip().splitlines() or ["?"])[-1]
            return None, f"install failed at `{' '.join(cmd[-2:])}`: {last}"
    if subprocess.run(check, capture_output=True).returncode != 0:
        return None, f"installed but `import {module}` fails"
    return py, ""


def worker_deepctr(data: Path, wl: dict, threads: int) -> dict:
    import torch
    from deepctr_torch.inputs import DenseFeat, SparseFeat
    from deepctr_torch.models.multitask import ESMM, MMOE

    meta, a = load_arrays(data)
    feats = [
        SparseFeat(nm, v, embedding_dim=wl["embedding_dim"])
        for nm, v in zip(meta["sparse"], meta["vocabs"], strict=True)
    ]
    feats += [DenseFeat(nm, 1) for nm in meta["dense"]]

    def x_of(s):
        x = {nm: a[f"{s}_sparse"][:, j] for j, nm in enumerate(meta["sparse"])}
        return x | {nm: a[f"{s}_dense"][:, j] for j, nm in enumerate(meta["dense"])}

    names = [name for name, _, _ in meta["auc"]]
    if wl["model"] == "mmoe":
        model = MMOE(feats, num_experts=wl["num_experts"], expert_dnn_hidden_units=tuple(wl["expert_dims"]),
                     gate_dnn_hidden_units=(), tower_dnn_hidden_units=tuple(wl["tower_dims"]),
                     task_types=["binary"] * len(names), task_names=names, seed=0)  # fmt: skip
    else:
        model = ESMM(feats, tower_dnn_hidden_units=tuple(wl["tower_dims"]), task_types=["binary", "binary"],
                     task_names=names, seed=0)  # fmt: skip
    model.compile(torch.optim.Adam(model.parameters(), lr=LR), ["binary_crossentropy"] * len(names))
    cols = [col for _, col, _ in meta["auc"]]
    y = a["train_labels"][:, cols]
    n = len(y)
    t0, c0 = time.perf_counter(), time.process_time()
    model.fit(x_of("train"), y, batch_size=BATCH, epochs=wl["epochs"], verbose=0)
    train_time, train_cpu = time.perf_counter() - t0, time.process_time() - c0
    labels = a["test_labels"]
    eval_time, eval_cpu, pred = timed(
        lambda: model.predict(x_of("test"), batch_size=EVAL_BATCH), EVAL_REPEATS
    )
    aucs = aucs_of(meta, labels, {name: pred[:, k] for k, name in enumerate(names)})
    return speeds(
        n * wl["epochs"], (train_time, train_cpu), len(labels), (eval_time, eval_cpu), aucs
    )


def worker_rechub(data: Path, wl: dict, threads: int, tmp: Path) -> dict:
    import torch
    from torch.utils.data import DataLoader
    from torch_rechub.basic.features import DenseFeature, SparseFeature
    from torch_rechub.models.multi_task import ESMM, MMOE
    from torch_rechub.trainers import MTLTrainer
    from torch_rechub.utils.data import DataGenerator, PredictDataset

    torch.manual_seed(0)
    meta, a = load_arrays(data)
    emb = wl["embedding_dim"]
    names = [name for name, _, _ in meta["auc"]]
    cols = [col for _, col, _ in meta["auc"]]
    if wl["model"] == "mmoe":
        feats = [
            SparseFeature(nm, v, embed_dim=emb)
            for nm, v in zip(meta["sparse"], meta["vocabs"], strict=True)
        ]
        feats += [DenseFeature(nm) for nm in meta["dense"]]

        def x_of(s):
            x = {nm: a[f"{s}_sparse"][:, j] for j, nm in enumerate(meta["sparse"])}
            return x | {nm: a[f"{s}_dense"][:, j] for j, nm in enumerate(meta["dense"])}

        def y_of(s):
            return a[f"{s}_labels"][:, cols]

        model = MMOE(feats, ["classification"] * len(names), wl["num_experts"], {"dims": wl["expert_dims"]},
                     [{"dims": wl["tower_dims"]}] * len(names))  # fmt: skip
    else:
        # Its ESMM embeds sparse features only: dense ones become 16 quantile-bucket ids.
        edges = [
            np.quantile(a["train_dense"][:, j], np.linspace(0, 1, 17)[1:-1])
            for j in range(len(meta["dense"]))
        ]
        feats = [
            SparseFeature(nm, v, embed_dim=emb)
            for nm, v in zip(meta["sparse"], meta["vocabs"], strict=True)
        ]
        feats += [SparseFeature(nm, 16, embed_dim=emb) for nm in meta["dense"]]

        def x_of(s):
            x = {nm: a[f"{s}_sparse"][:, j] for j, nm in enumerate(meta["sparse"])}
            return x | {
                nm: np.searchsorted(edges[j], a[f"{s}_dense"][:, j])
                for j, nm in enumerate(meta["dense"])
            }

        def y_of(s):  # its label order: cvr (no loss on it), ctr, ctcvr
            lab = a[f"{s}_labels"]
            return np.stack([lab[:, cols[1]], lab[:, cols[0]], lab[:, cols[1]]], 1)

        user = [f for f in feats if f.name.startswith("user")]
        item = [f for f in feats if not f.name.startswith("user")]
        model = ESMM(user, item, {"dims": wl["tower_dims"]}, {"dims": wl["tower_dims"]})
    task_types = ["classification"] * (len(names) if wl["model"] == "mmoe" else 3)
    train_dl, _, _ = DataGenerator(x_of("train"), y_of("train")).generate_dataloader(
        x_of("val"), y_of("val"), x_of("test"), y_of("test"), batch_size=BATCH
    )
    test_dl = DataLoader(PredictDataset(x_of("test")), batch_size=EVAL_BATCH)
    trainer = MTLTrainer(model, task_types, optimizer_params={"lr": LR, "weight_decay": 1e-5},
                         n_epoch=wl["epochs"], device="cpu", model_path=str(tmp))  # fmt: skip
    n = len(a["train_labels"])
    import contextlib
    import io

    t0, c0 = time.perf_counter(), time.process_time()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        for _ in range(wl["epochs"]):
            trainer.train_one_epoch(train_dl)
    train_time, train_cpu = time.perf_counter() - t0, time.process_time() - c0
    labels = a["test_labels"]

    def predict():
        with contextlib.redirect_stderr(io.StringIO()):
            return np.asarray(trainer.predict(model, test_dl))

    eval_time, eval_cpu, pred = timed(predict, EVAL_REPEATS)
    if wl["model"] == "mmoe":
        probs = {name: pred[:, k] for k, name in enumerate(names)}
    else:
        probs = {"ctr": pred[:, 1], "ctcvr": pred[:, 2]}
    aucs = aucs_of(meta, labels, probs)
    return speeds(
        n * wl["epochs"], (train_time, train_cpu), len(labels), (eval_time, eval_cpu), aucs
    )
