"""bench.py's workers: one process per system and repetition, writing its measurements as JSON.

mtlrec runs its real code path (a Hydra-composed `mtlrec train` config run by
mtlrec.experiment.run); `bare` is a plain PyTorch loop on in-memory tensors, the reference for
"no framework overhead". The peers' workers are in bench_peers.py.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from bench_common import peak_rss_mib, timed, train_epoch_cpu

# Opt-in mtlrec variants (--systems mtlrec,bare,mtlrec-bf16,mtlrec-compile): extra overrides.
VARIANTS = {"mtlrec-bf16": ["trainer.precision=bf16"], "mtlrec-compile": ["trainer.compile=true"]}
LR, BATCH, EVAL_BATCH, EMB_STD = 1e-3, 1024, 8192, 0.01
EVAL_REPEATS = 3  # the test split is predicted this many times; medians reported


def load_arrays(data: Path) -> tuple[dict, dict]:
    meta = json.loads((data / "meta.json").read_text())
    with np.load(data / "arrays.npz") as z:
        arrays = {k: z[k] for k in z.files}
    return meta, arrays


def aucs_of(meta: dict, labels: np.ndarray, probs: dict[str, np.ndarray]) -> dict[str, float]:
    from sklearn.metrics import roc_auc_score

    return {name: float(roc_auc_score(labels[:, col], probs[name])) for name, col, _ in meta["auc"]}


def speeds(
    trained: int, train_s: tuple[float, float], scored: int, eval_s: tuple[float, float], aucs: dict
) -> dict:
    """A worker's result: samples per wall and per CPU second of training (rows x epochs) and of
    scoring the test split, with its AUCs and torch's thread count."""
    import torch

    return {
        "train_samples_per_s": trained / train_s[0],
        "eval_samples_per_s": scored / eval_s[0],
        "train_samples_per_cpu_s": trained / train_s[1],
        "eval_samples_per_cpu_s": scored / eval_s[1],
        "auc": aucs,
        "threads": torch.get_num_threads(),
    }


def worker_mtlrec(data: Path, wl: dict, threads: int, run_dir: Path, extra: list[str]) -> dict:
    import torch
    from hydra import compose, initialize_config_module

    from mtlrec.experiment import run
    from mtlrec.training.evaluator import Evaluator

    # Process CPU seconds of the training epochs and wall + CPU seconds of Evaluator.predict on the
    # test split (what `mtlrec train`'s test evaluation and `mtlrec predict` run; metric
    # computation is left out for every system). CPU time besides wall time: on a shared machine
    # the wall clock also counts waiting for a core.
    cpu: dict = {"in_test": False}
    plain_evaluate, plain_predict = Evaluator.evaluate, Evaluator.predict

    def flagged_evaluate(self, split, name, *a, **kw):
        cpu["in_test"] = name == "test"
        try:
            return plain_evaluate(self, split, name, *a, **kw)
        finally:
            cpu["in_test"] = False

    def timed_predict(self, split, *a, **kw):
        if cpu["in_test"]:  # the run's own test evaluation: keep what it needs to time it again
            cpu["trainer"], cpu["split"] = self, split
        return plain_predict(self, split, *a, **kw)

    Evaluator.evaluate, Evaluator.predict = flagged_evaluate, timed_predict
    meta = json.loads((data / "meta.json").read_text())
    model = [f"model={wl['model']}", f"model.embedding_dim={wl['embedding_dim']}"]
    model.append(f"model.tower_dims={wl['tower_dims']}".replace(" ", ""))
    if wl["model"] == "mmoe":
        model += [
            f"model.num_experts={wl['num_experts']}",
            f"model.expert_dims={wl['expert_dims']}".replace(" ", ""),
        ]
    overrides = meta["mtlrec_overrides"] + model
    overrides += [
        f"trainer.epochs={wl['epochs']}",
        f"trainer.batch_size={BATCH}",
        f"trainer.eval_batch_size={EVAL_BATCH}",
        f"trainer.lr={LR}",
        "trainer.patience=null",
        f"trainer.num_threads={threads}",
        "trainer.progress=false",
        "device=cpu",
        "seed=0",
    ] + extra
    with initialize_config_module(config_module="mtlrec.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    with train_epoch_cpu() as epoch_cpu:
        run(cfg, run_dir)
    test_wall, test_cpu, _ = timed(
        lambda: plain_predict(cpu["trainer"], cpu["split"]), EVAL_REPEATS
    )
    m = json.loads((run_dir / "metrics.json").read_text())
    aucs = {name: m["metrics"][f"test/{name}_auc"] for name, _, _ in meta["auc"]}
    import csv

    with open(run_dir / "history.csv") as f:
        epochs = [float(r["train_samples_per_s"]) for r in csv.DictReader(f)]
    with np.load(data / "arrays.npz") as z:
        n_train, n_test = len(z["train_labels"]), len(z["test_labels"])
    return {
        "train_samples_per_cpu_s": n_train * wl["epochs"] / sum(epoch_cpu),
        "eval_samples_per_cpu_s": n_test / test_cpu,
        "epoch_train_samples_per_s": epochs,
        "train_samples_per_s": m["train_samples_per_s"],
        "eval_samples_per_s": n_test / test_wall,
        "auc": aucs,
        "threads": torch.get_num_threads(),
        "overrides": overrides,
    }


def _bare_model(meta: dict, wl: dict):
    """The same architectures as mtlrec's MMoE / ESMM, written out plainly."""
    import torch
    from torch import nn

    n_in = wl["embedding_dim"] * len(meta["sparse"]) + len(meta["dense"])

    class Bare(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(sum(meta["vocabs"]), wl["embedding_dim"])
            nn.init.normal_(self.emb.weight, std=EMB_STD)
            if wl["model"] == "mmoe":
                e, h, t = wl["num_experts"], wl["expert_dims"][0], len(meta["auc"])
                self.e, self.t = e, t
                self.experts = nn.Linear(n_in, e * h)  # all experts in one matmul
                self.gates = nn.Linear(n_in, t * e)  # all gates in one matmul
                self.towers = nn.ModuleList(
                    nn.Sequential(
                        nn.Linear(h, wl["tower_dims"][0]),
                        nn.ReLU(),
                        nn.Linear(wl["tower_dims"][0], 1),
                    )
                    for _ in range(t)
                )
            else:

                def tower():
                    layers, d = [], n_in
                    for h in wl["tower_dims"]:
                        layers += [nn.Linear(d, h), nn.ReLU()]
                        d = h
                    return nn.Sequential(*layers, nn.Linear(d, 1))

                self.ctr, self.cvr = tower(), tower()

        def forward(self, sparse, dense):
            x = torch.cat([self.emb(sparse).flatten(1), dense], 1)
            if wl["model"] == "mmoe":
                b = x.shape[0]
                experts = torch.relu(self.experts(x)).view(b, self.e, -1)  # [B, E, H]
                gates = torch.softmax(self.gates(x).view(b, self.t, self.e), -1)  # [B, T, E]
                mixed = torch.bmm(gates, experts)  # [B, T, H]
                return [tw(mixed[:, k]).squeeze(-1) for k, tw in enumerate(self.towers)]
            ctr, cvr = self.ctr(x).squeeze(-1), self.cvr(x).squeeze(-1)
            return [ctr, cvr]

    return Bare()


def worker_bare(data: Path, wl: dict, threads: int) -> dict:
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    meta, a = load_arrays(data)
    offsets = torch.tensor(np.cumsum([0] + meta["vocabs"][:-1]))
    split = {
        s: (torch.from_numpy(a[f"{s}_sparse"]) + offsets, torch.from_numpy(a[f"{s}_dense"]),
            torch.from_numpy(a[f"{s}_labels"]))
        for s in ("train", "test")
    }  # fmt: skip
    model = _bare_model(meta, wl)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    cols = [col for _, col, _ in meta["auc"]]
    sparse, dense, labels = split["train"]
    n, train_time = len(labels), 0.0
    c0 = time.process_time()
    for _ in range(wl["epochs"]):
        t0 = time.perf_counter()
        perm = torch.randperm(n)
        for i in range(0, n, BATCH):
            idx = perm[i : i + BATCH]
            y = labels[idx]
            out = model(sparse[idx], dense[idx])
            if wl["model"] == "mmoe":
                loss = sum(
                    F.binary_cross_entropy_with_logits(o, y[:, c])
                    for o, c in zip(out, cols, strict=True)
                )
            else:  # ESMM: BCE(pCTR, click) + BCE(pCTR * pCVR, conversion), over all impressions
                p_ctr, p_cvr = torch.sigmoid(out[0]), torch.sigmoid(out[1])
                loss = F.binary_cross_entropy(p_ctr, y[:, cols[0]]) + F.binary_cross_entropy(
                    (p_ctr * p_cvr).clamp(1e-7, 1 - 1e-7), y[:, cols[1]]
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        train_time += time.perf_counter() - t0
    train_cpu = time.process_time() - c0
    sparse, dense, labels = split["test"]

    def predict():
        model.eval()
        with torch.no_grad():
            outs = [
                model(sparse[i : i + EVAL_BATCH], dense[i : i + EVAL_BATCH])
                for i in range(0, len(labels), EVAL_BATCH)
            ]
        logits = [torch.cat([o[k] for o in outs]) for k in range(2)]
        if wl["model"] == "mmoe":
            return {
                name: torch.sigmoid(lg).numpy()
                for (name, _, _), lg in zip(meta["auc"], logits, strict=True)
            }
        p_ctr = torch.sigmoid(logits[0])
        return {"ctr": p_ctr.numpy(), "ctcvr": (p_ctr * torch.sigmoid(logits[1])).numpy()}

    eval_time, eval_cpu, probs = timed(predict, EVAL_REPEATS)
    aucs = aucs_of(meta, labels.numpy(), probs)
    return speeds(
        n * wl["epochs"], (train_time, train_cpu), len(labels), (eval_time, eval_cpu), aucs
    )


def worker_main(args: argparse.Namespace) -> int:
    import torch

    torch.set_num_threads(args.threads)
    import sklearn.metrics  # noqa: F401  (imported before any timed section)

    base_rss = peak_rss_mib()
    wl = json.loads(args.wl)
    data, out = Path(args.data), Path(args.out)
    if args.worker.startswith("mtlrec"):
        extra = args.mtlrec_override + VARIANTS.get(args.worker, [])
        res = worker_mtlrec(data, wl, args.threads, out.with_suffix(".run"), extra)
    elif args.worker == "bare":
        res = worker_bare(data, wl, args.threads)
    else:
        import bench_peers  # only the peers' venvs have their packages

        if args.worker == "deepctr-torch":
            res = bench_peers.worker_deepctr(data, wl, args.threads)
        else:
            res = bench_peers.worker_rechub(data, wl, args.threads, out.parent)
    res["peak_rss_mib"] = peak_rss_mib()
    res["import_rss_mib"] = base_rss
    res["torch"] = torch.__version__
    out.write_text(json.dumps(res))
    return 0


# ---------------------------------------------------------------------------------------------
