"""mtlrec against a bare PyTorch loop and the peers, same architecture, same data, same run.

    python scripts/bench.py                       # census (MMoE) and synthetic_ccp 1M rows (ESMM)
    python scripts/bench.py --workload census --repeats 5 --markdown /tmp/census.md
    python scripts/bench.py --systems mtlrec,bare --workload synthetic_ccp --rows 200000

Systems (each repetition of each system runs in its own fresh process, so peak RSS is its own):
  mtlrec         the real code path: a Hydra-composed `mtlrec train` config run by
                 mtlrec.experiment.run (per-epoch validation, checkpoints, run dir and all)
  bare           a plain PyTorch loop written below on in-memory tensors: no framework at all,
                 the reference for "no framework overhead" (experts fused in one matmul)
  deepctr-torch  DeepCTR-Torch 0.3.0 (MMOE / ESMM), in its own venv
  torch-rechub   torch-rechub 0.9.0 (MMOE / ESMM + MTLTrainer), in its own venv

The peers are installed on first use into .bench/venvs/<peer> (torch==2.13.0 first, then the
pinned peer); a peer that cannot be installed is skipped with one line saying why.

Measured per system (medians over `--repeats` repetitions, systems interleaved: rep 1 of every
system, then rep 2, ... so that load from other jobs on the machine hits all systems alike):
  train samples/s  training rows x epochs / seconds spent in training epochs (no validation)
  eval samples/s   test rows / median seconds (of 3) to predict the whole test split (every output's
                   probabilities; mtlrec: Trainer.predict, which its test evaluation runs);
                   AUCs are computed after the timer stops, for every system alike
  per CPU s        the same rows / process CPU seconds (user + system) of that phase: on a
                   shared machine the wall clock also counts time spent waiting for a core,
                   CPU time mostly does not (1 thread), so these ratios are the steadier ones
  peak RSS         VmHWM of the system's process (data, model, framework, everything)
  test AUC         per task on the test split, at the end of training (mtlrec: at its best
                   validation epoch, as `mtlrec train` reports it)
and each throughput as a ratio to the bare loop's. Threads (torch.set_num_threads, OMP/MKL env)
and OMP_WAIT_POLICY are fixed for every process and printed.

Workloads
  census         UCI census-income (KDD) test file (census-income.test.gz in $MTLREC_CENSUS_DIR,
                 default ../shared/data/census-income-kdd next to the repository), prepared by
                 `mtlrec prepare dataset=census` (60/20/20 at random, seed 0; vocabularies from
                 train; tasks income > 50K and never married; 32 categorical + 7 numeric fields).
                 Without `mtlrec prepare`, the script's own loader makes the same split (ids over
                 the whole file). MMoE: 8 experts [16], linear gates, towers [8], embedding 4,
                 Adam 1e-3, batch 1024, 5 epochs.
  synthetic_ccp  mtlrec's embedded generator at --rows rows (default 1M; 70/15/15); ESMM with
                 towers [16, 8], embedding 16, Adam 1e-3, batch 1024 (1 epoch by default: the
                 slowest peer needs minutes per epoch). torch-rechub's ESMM takes sparse
                 features only, so for it the 3 dense features are bucketized into 16 quantile ids.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CENSUS_FILE = (
    Path(os.environ.get("MTLREC_CENSUS_DIR", ROOT.parent / "shared" / "data" / "census-income-kdd"))
    / "census-income.test.gz"
)
PEERS = {
    # name -> (pip requirement, extra undeclared runtime dependencies, import name)
    "deepctr-torch": ("deepctr-torch==0.3.0", ["requests"], "deepctr_torch"),
    "torch-rechub": ("torch-rechub==0.9.0", [], "torch_rechub"),
}
TORCH_PIN = "torch==2.13.0"
SYSTEMS = ("mtlrec", "bare", "deepctr-torch", "torch-rechub")
# Opt-in mtlrec variants (--systems mtlrec,bare,mtlrec-bf16,mtlrec-compile): extra overrides.
VARIANTS = {"mtlrec-bf16": ["trainer.precision=bf16"], "mtlrec-compile": ["trainer.compile=true"]}
ALL_SYSTEMS = SYSTEMS + tuple(VARIANTS)

# Census columns (UCI order). Labels: 41 (income) and 7 (marital status); 24 is the sampling
# weight, which UCI says must not be used as a feature.
CENSUS_NUMERIC = {0: "age", 5: "wage_per_hour", 16: "capital_gains", 17: "capital_losses",
                  18: "dividends", 30: "num_emp", 39: "weeks_worked"}  # fmt: skip
CENSUS_LOG1P = {5, 16, 17, 18}
CENSUS_SKIP = {7, 24, 41}

WORKLOADS = {
    "census": {
        "model": "mmoe",
        "num_experts": 8,
        "expert_dims": [16],
        "tower_dims": [8],
        "embedding_dim": 4,
        "epochs": 5,
    },
    "synthetic_ccp": {"model": "esmm", "tower_dims": [16, 8], "embedding_dim": 16, "epochs": 1},
}
LR, BATCH, EVAL_BATCH, EMB_STD = 1e-3, 1024, 8192, 0.01


def peak_rss_mib() -> float:
    """This process's peak RSS: VmHWM of /proc/self/status (ru_maxrss would also count the
    high-water mark inherited from the parent process across fork + exec)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------------------------------
# data: one prepared mtlrec dataset + the same rows as arrays.npz for the other systems
# ---------------------------------------------------------------------------------------------
def _write_arrays(out: Path, splits: dict, meta: dict) -> None:
    np.savez(out / "arrays.npz", **{f"{s}_{k}": v for s, d in splits.items() for k, v in d.items()})
    (out / "meta.json").write_text(json.dumps(meta, indent=1))


def _arrays_from_prepared(prepared: Path) -> tuple[dict, dict]:
    """A prepared mtlrec dataset's splits as numpy arrays (per-field ids, dense, labels) + meta."""
    import pyarrow.parquet as pq

    from mtlrec.data.spec import DatasetSpec

    spec = DatasetSpec.load(prepared)
    arrays = {}
    for s, fname in spec.splits.items():
        t = pq.read_table(prepared / fname)
        arrays[s] = {
            "sparse": np.stack([t[f.name].to_numpy() for f in spec.sparse], 1).astype(np.int64),
            "dense": np.stack([t[f.name].to_numpy() for f in spec.dense], 1).astype(np.float32),
            "labels": np.stack([t[c].to_numpy() for c in spec.labels], 1).astype(np.float32),
        }
    meta = {
        "sparse": [f.name for f in spec.sparse],
        "vocabs": [f.vocab_size for f in spec.sparse],
        "dense": [f.name for f in spec.dense],
        "labels": list(spec.labels),
    }
    return arrays, meta


def census_tag() -> str:
    import mtlrec.cli

    return "census-prepared" if "prepare" in mtlrec.cli.COMMANDS else "census-simple"


def prepare_census(out: Path) -> None:
    """The census workload: `mtlrec prepare dataset=census` when this mtlrec has it (issue 3),
    else the simple loader below; either way one prepared dir for mtlrec + arrays for the rest."""
    import mtlrec.cli

    if "prepare" not in mtlrec.cli.COMMANDS:
        return prepare_census_simple(out)
    env = dict(os.environ, MTLREC_DATA_DIR=str(out / "mtlrec-prepare"))
    cmd = [sys.executable, "-m", "mtlrec", "prepare", "dataset=census",
           f"dataset.raw_dir={CENSUS_FILE.parent}"]  # fmt: skip
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    prepared = out / "mtlrec-prepare" / "census-g1"
    arrays, meta = _arrays_from_prepared(prepared)
    li = {c: i for i, c in enumerate(meta["labels"])}
    meta |= {
        "workload": "census",
        "source": "mtlrec prepare dataset=census (train-only vocabularies, 60/20/20 split, seed 0)",
        "auc": [["income", li["income"], None], ["marital", li["marital"], None]],
        "mtlrec_overrides": ["dataset=census", f"dataset.path={prepared}"],
    }
    _write_arrays(out, arrays, meta)


def prepare_census_simple(out: Path) -> None:
    """census-income.test.gz -> prepared mtlrec dataset (out/prepared) + out/arrays.npz."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mtlrec.data.spec import DatasetSpec, FeatureSpec, TaskSpec

    raw = pd.read_csv(
        CENSUS_FILE, header=None, sep=",", skipinitialspace=True, dtype=str, keep_default_na=False
    )
    n = len(raw)
    labels = np.stack(
        [
            (raw[41].str.strip() == "50000+.").to_numpy(np.float32),
            (raw[7].str.strip() == "Never married").to_numpy(np.float32),
        ],
        axis=1,
    )
    sparse_cols = [c for c in range(42) if c not in CENSUS_NUMERIC and c not in CENSUS_SKIP]
    sparse, vocabs = np.empty((n, len(sparse_cols)), np.int64), []
    for j, c in enumerate(sparse_cols):
        codes, uniques = pd.factorize(raw[c].str.strip())
        sparse[:, j], _ = codes, vocabs.append(len(uniques))
    dense = np.stack(
        [
            np.log1p(raw[c].astype(np.float64)) if c in CENSUS_LOG1P else raw[c].astype(np.float64)
            for c in CENSUS_NUMERIC
        ],
        axis=1,
    )
    order = np.random.default_rng(0).permutation(n)
    cut1, cut2 = int(0.6 * n), int(0.8 * n)
    parts = {"train": order[:cut1], "val": order[cut1:cut2], "test": order[cut2:]}
    mean, std = dense[parts["train"]].mean(0), dense[parts["train"]].std(0) + 1e-12
    dense = ((dense - mean) / std).astype(np.float32)

    sparse_names = [f"c{c}" for c in sparse_cols]
    dense_names = list(CENSUS_NUMERIC.values())
    label_names = ["income", "marital"]
    prepared = out / "prepared"
    prepared.mkdir(parents=True, exist_ok=True)
    spec = DatasetSpec(
        name="census_bench",
        features=tuple(
            FeatureSpec(nm, "sparse", v) for nm, v in zip(sparse_names, vocabs, strict=True)
        )
        + tuple(FeatureSpec(nm, "dense") for nm in dense_names),
        labels=tuple(label_names),
        tasks=(TaskSpec("income", "income"), TaskSpec("marital", "marital")),
        splits={s: f"{s}.parquet" for s in parts},
    )
    arrays = {}
    for s, rows in parts.items():
        cols = {nm: sparse[rows, j].astype(np.int32) for j, nm in enumerate(sparse_names)}
        cols |= {nm: dense[rows, j] for j, nm in enumerate(dense_names)}
        cols |= {nm: labels[rows, j] for j, nm in enumerate(label_names)}
        pq.write_table(pa.table(cols), prepared / f"{s}.parquet")
        arrays[s] = {"sparse": sparse[rows], "dense": dense[rows], "labels": labels[rows]}
    spec.save(prepared)
    meta = {
        "workload": "census",
        "source": "scripts/bench.py's own loader (ids over the whole file, 60/20/20 split, seed 0)",
        "sparse": sparse_names,
        "vocabs": vocabs,
        "dense": dense_names,
        "labels": label_names,
        # AUC targets: (name, label column, sample-space column or None)
        "auc": [["income", 0, None], ["marital", 1, None]],
        "mtlrec_overrides": ["dataset=prepared", f"dataset.path={prepared}"],
    }
    _write_arrays(out, arrays, meta)


def prepare_synthetic(out: Path, rows: int) -> None:
    """mtlrec's synthetic_ccp generator (in this process) -> out/prepared + out/arrays.npz."""
    from mtlrec.data.synthetic_ccp import ensure_prepared

    prepared = ensure_prepared(out / "prepared", rows, 0)
    arrays, meta = _arrays_from_prepared(prepared)
    li = {c: i for i, c in enumerate(meta["labels"])}
    meta |= {
        "workload": "synthetic_ccp",
        "source": f"mtlrec's synthetic_ccp generator, {rows} rows, seed 0 (70/15/15)",
        "auc": [["ctr", li["click"], None], ["ctcvr", li["conversion"], None]],
        "funnel": [li["click"], li["conversion"]],
        "mtlrec_overrides": [
            "dataset=synthetic_ccp",
            f"dataset.num_rows={rows}",
            "dataset.generator_seed=0",
            f"dataset.path={prepared}",
        ],
    }
    _write_arrays(out, arrays, meta)


# ---------------------------------------------------------------------------------------------
# workers (one process per system and repetition)
# ---------------------------------------------------------------------------------------------
def _load(data: Path) -> tuple[dict, dict]:
    meta = json.loads((data / "meta.json").read_text())
    with np.load(data / "arrays.npz") as z:
        arrays = {k: z[k] for k in z.files}
    return meta, arrays


EVAL_REPEATS = 3  # the test split is predicted this many times; medians reported


def _timed(fn):
    """(median wall seconds, median CPU seconds, last result) of EVAL_REPEATS calls of fn()."""
    walls, cpus = [], []
    for _ in range(EVAL_REPEATS):
        t0, c0 = time.perf_counter(), time.process_time()
        result = fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return statistics.median(walls), statistics.median(cpus), result


def _aucs(meta: dict, labels: np.ndarray, probs: dict[str, np.ndarray]) -> dict[str, float]:
    from sklearn.metrics import roc_auc_score

    return {name: float(roc_auc_score(labels[:, col], probs[name])) for name, col, _ in meta["auc"]}


def worker_mtlrec(data: Path, wl: dict, threads: int, run_dir: Path, extra: list[str]) -> dict:
    import torch
    from hydra import compose, initialize_config_module

    from mtlrec.experiment import run
    from mtlrec.training.evaluator import Evaluator
    from mtlrec.training.trainer import Trainer

    # Process CPU seconds of the training epochs and wall + CPU seconds of Evaluator.predict on the
    # test split (what `mtlrec train`'s test evaluation and `mtlrec predict` run; metric
    # computation is left out for every system). CPU time besides wall time: on a shared machine
    # the wall clock also counts waiting for a core.
    cpu: dict = {"train": 0.0, "in_test": False}
    plain_epoch, plain_evaluate, plain_predict = (
        Trainer.train_epoch,
        Evaluator.evaluate,
        Evaluator.predict,
    )

    def timed_epoch(self, *a, **kw):
        c0 = time.process_time()
        row = plain_epoch(self, *a, **kw)
        cpu["train"] += time.process_time() - c0
        return row

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

    Trainer.train_epoch = timed_epoch
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
    run(cfg, run_dir)
    test_wall, test_cpu, _ = _timed(lambda: plain_predict(cpu["trainer"], cpu["split"]))
    m = json.loads((run_dir / "metrics.json").read_text())
    aucs = {name: m["metrics"][f"test/{name}_auc"] for name, _, _ in meta["auc"]}
    import csv

    with open(run_dir / "history.csv") as f:
        epochs = [float(r["train_samples_per_s"]) for r in csv.DictReader(f)]
    with np.load(data / "arrays.npz") as z:
        n_train, n_test = len(z["train_labels"]), len(z["test_labels"])
    return {
        "train_samples_per_cpu_s": n_train * wl["epochs"] / cpu["train"],
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
    meta, a = _load(data)
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

    eval_time, eval_cpu, probs = _timed(predict)
    aucs = _aucs(meta, labels.numpy(), probs)
    return {
        "train_samples_per_s": n * wl["epochs"] / train_time,
        "eval_samples_per_s": len(labels) / eval_time,
        "train_samples_per_cpu_s": n * wl["epochs"] / train_cpu,
        "eval_samples_per_cpu_s": len(labels) / eval_cpu,
        "auc": aucs,
        "threads": torch.get_num_threads(),
    }


def worker_deepctr(data: Path, wl: dict, threads: int) -> dict:
    import torch
    from deepctr_torch.inputs import DenseFeat, SparseFeat
    from deepctr_torch.models.multitask import ESMM, MMOE

    meta, a = _load(data)
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
    eval_time, eval_cpu, pred = _timed(lambda: model.predict(x_of("test"), batch_size=EVAL_BATCH))
    aucs = _aucs(meta, labels, {name: pred[:, k] for k, name in enumerate(names)})
    return {
        "train_samples_per_s": n * wl["epochs"] / train_time,
        "eval_samples_per_s": len(labels) / eval_time,
        "train_samples_per_cpu_s": n * wl["epochs"] / train_cpu,
        "eval_samples_per_cpu_s": len(labels) / eval_cpu,
        "auc": aucs,
        "threads": torch.get_num_threads(),
    }


def worker_rechub(data: Path, wl: dict, threads: int, tmp: Path) -> dict:
    import torch
    from torch.utils.data import DataLoader
    from torch_rechub.basic.features import DenseFeature, SparseFeature
    from torch_rechub.models.multi_task import ESMM, MMOE
    from torch_rechub.trainers import MTLTrainer
    from torch_rechub.utils.data import DataGenerator, PredictDataset

    torch.manual_seed(0)
    meta, a = _load(data)
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

    eval_time, eval_cpu, pred = _timed(predict)
    if wl["model"] == "mmoe":
        probs = {name: pred[:, k] for k, name in enumerate(names)}
    else:
        probs = {"ctr": pred[:, 1], "ctcvr": pred[:, 2]}
    aucs = _aucs(meta, labels, probs)
    return {
        "train_samples_per_s": n * wl["epochs"] / train_time,
        "eval_samples_per_s": len(labels) / eval_time,
        "train_samples_per_cpu_s": n * wl["epochs"] / train_cpu,
        "eval_samples_per_cpu_s": len(labels) / eval_cpu,
        "auc": aucs,
        "threads": torch.get_num_threads(),
    }


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
    elif args.worker == "deepctr-torch":
        res = worker_deepctr(data, wl, args.threads)
    else:
        res = worker_rechub(data, wl, args.threads, out.parent)
    res["peak_rss_mib"] = peak_rss_mib()
    res["import_rss_mib"] = base_rss
    res["torch"] = torch.__version__
    out.write_text(json.dumps(res))
    return 0


# ---------------------------------------------------------------------------------------------
# --hot-path: the per-step operations mtlrec changed, timed alone (microseconds per call)
# ---------------------------------------------------------------------------------------------
def hot_path(threads: int) -> str:
    import torch

    torch.set_num_threads(threads)

    def us(fn, n=200):
        for _ in range(10):
            fn()
        times = []
        for _ in range(5):
            t0 = time.process_time()
            for _ in range(n):
                fn()
            times.append((time.process_time() - t0) / n * 1e6)
        return statistics.median(times)

    rows = ["| operation (batch 1024, 1 thread) | before | after | speed-up |", "|---|---|---|---|"]
    # shapes: census MMoE (526 ids x 4, 32 fields) and synthetic_ccp ESMM (30,809 ids x 16, 11)
    for name, vocab, dim, fields in (("census", 526, 4, 32), ("synthetic_ccp", 30809, 16, 11)):
        w = torch.nn.Parameter(torch.randn(vocab, dim) * 0.01)
        ids = torch.randint(0, vocab, (1024, fields))
        g = torch.randn(1024, fields, dim)

        def emb(w=w, ids=ids, g=g):
            w.grad = None
            torch.nn.functional.embedding(ids, w).backward(g)

        def isel(w=w, ids=ids, g=g):
            w.grad = None
            w.index_select(0, ids.view(-1)).view(ids.shape[0], ids.shape[1], -1).backward(g)

        a, b = us(emb), us(isel)
        rows.append(
            f"| {name}: embedding lookup + backward: F.embedding -> index_select | {a:,.0f} us | {b:,.0f} us | {a / b:.1f}x |"
        )
        shapes = {"census": [(vocab, dim), (135, 128), (128,), (135, 16), (16,), (2, 16, 8), (2, 1, 8), (2, 8, 1), (2, 1, 1)],
                  "synthetic_ccp": [(vocab, dim), (179, 16), (16,), (16, 8), (8,), (8, 1), (1,)] * 1}[name]  # fmt: skip
        times = []
        for kw in ({}, {"fused": True}):
            ps = [torch.nn.Parameter(torch.randn(*sh)) for sh in shapes]
            for p_ in ps:
                p_.grad = torch.randn_like(p_)
            opt = torch.optim.Adam(ps, lr=1e-3, **kw)
            times.append(us(opt.step))
        rows.append(
            f"| {name}: Adam step: default (per-tensor loop) -> fused=True | {times[0]:,.0f} us | {times[1]:,.0f} us | {times[0] / times[1]:.1f}x |"
        )
        src = torch.randint(0, vocab, (60_000, fields))
        idx = torch.randperm(60_000)[:1024]
        a, b = (
            us(lambda src=src, idx=idx: src[idx]),
            us(lambda src=src, idx=idx: src.index_select(0, idx)),
        )
        rows.append(
            f"| {name}: batch gather of the ids: split[idx] -> index_select | {a:,.0f} us | {b:,.0f} us | {a / b:.1f}x |"
        )
    return "\n".join(rows)


# ---------------------------------------------------------------------------------------------
# orchestration
# ---------------------------------------------------------------------------------------------
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


def run_worker(py: Path, system: str, data: Path, wl: dict, args, out: Path) -> dict:
    env = dict(os.environ)
    env.update({
        "OMP_NUM_THREADS": str(args.threads),
        "MKL_NUM_THREADS": str(args.threads),
        "OMP_WAIT_POLICY": args.omp_wait_policy,
        "PYTHONWARNINGS": "ignore",
        "MTLREC_DATA_DIR": str(data.parent / "mtlrec-cache"),
    })  # fmt: skip
    cmd = [str(py), str(Path(__file__).resolve()), "--worker", system, "--data", str(data),
           "--out", str(out), "--threads", str(args.threads), "--wl", json.dumps(wl)]  # fmt: skip
    for o in args.mtlrec_override:
        cmd += ["--mtlrec-override", o]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=out.parent)
    if r.returncode != 0 or not out.exists():
        tail = "\n".join((r.stdout + r.stderr).strip().splitlines()[-15:])
        return {"error": f"exit {r.returncode}: {tail}"}
    res = json.loads(out.read_text())
    res["wall_s"] = time.perf_counter() - t0
    return res


def summarize(system: str, runs: list[dict]) -> dict:
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return {"system": system, "error": runs[0]["error"] if runs else "no runs"}

    def med(key):
        return statistics.median(r[key] for r in ok)

    return {
        "system": system,
        "train": med("train_samples_per_s"),
        "eval": med("eval_samples_per_s"),
        "rss": med("peak_rss_mib"),
        "train_cpu": med("train_samples_per_cpu_s"),
        "eval_cpu": med("eval_samples_per_cpu_s"),
        "auc": {k: statistics.median(r["auc"][k] for r in ok) for k in ok[0]["auc"]},
        "n": len(ok),
        # mtlrec's own per-epoch speeds: epochs 2+ leave out warm-up (and torch.compile's compile)
        "steady": statistics.median(
            statistics.median(r["epoch_train_samples_per_s"][1:]) for r in ok
        )
        if all(len(r.get("epoch_train_samples_per_s", [])) > 1 for r in ok)
        else None,
        "train_all": [r["train_samples_per_s"] for r in ok],
    }


def table(name: str, wl: dict, rows: list[dict], meta: dict) -> str:
    bare = next((r for r in rows if r["system"] == "bare" and "error" not in r), None)
    tasks = [n for n, _, _ in meta["auc"]]
    head = [
        "system",
        "train samples/s",
        "x bare",
        "per CPU s",
        "x bare",
        "eval samples/s",
        "x bare",
    ]
    head += ["per CPU s", "x bare", "peak RSS MiB"]
    head += [f"test AUC {t}" for t in tasks] + ["reps"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['system']} | skipped: {r['error'].splitlines()[-1][:150]} |")
            continue
        cells = [r["system"]]
        for key in ("train", "train_cpu", "eval", "eval_cpu"):
            cells += [f"{r[key]:,.0f}", f"{r[key] / bare[key]:.2f}" if bare else "-"]
        cells.append(f"{r['rss']:,.0f}")
        cells += [f"{r['auc'][t]:.4f}" for t in tasks] + [str(r["n"])]
        lines.append("| " + " | ".join(cells) + " |")
    notes = [
        f"{r['system']}: {r['steady']:,.0f} train samples/s over epochs 2+"
        + (f" ({r['steady'] / bare['train']:.2f}x bare)" if bare else "")
        for r in rows
        if r.get("steady")
    ]
    return "\n".join(lines) + ("\n\n" + "; ".join(notes) + "." if notes else "")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workload", choices=["census", "synthetic_ccp", "all"], default="all")
    p.add_argument(
        "--systems", default=",".join(SYSTEMS), help="comma list of " + ", ".join(SYSTEMS)
    )
    p.add_argument(
        "--repeats", type=int, default=3, help="repetitions per system (median reported)"
    )
    p.add_argument(
        "--peer-repeats",
        type=int,
        default=None,
        help="repetitions of the peers (default: --repeats)",
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--omp-wait-policy", default="PASSIVE")
    p.add_argument("--rows", type=int, default=1_000_000, help="synthetic_ccp rows")
    p.add_argument("--epochs", type=int, default=None, help="override the workload's epochs")
    p.add_argument("--work-dir", default=str(ROOT / ".bench"))
    p.add_argument("--no-install", action="store_true", help="never create peer venvs")
    p.add_argument("--markdown", default=None, help="also write the tables to this file")
    p.add_argument("--mtlrec-override", action="append", default=[], help="extra mtlrec override")
    p.add_argument("--hot-path", action="store_true", help="only time the per-step operations")
    # worker mode (internal)
    p.add_argument("--worker", choices=ALL_SYSTEMS, help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--wl", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker_main(args)
    if args.hot_path:
        print(hot_path(args.threads))
        return 0

    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in systems if s not in ALL_SYSTEMS]
    if unknown:
        p.error(f"--systems: unknown {unknown}; choose from {list(ALL_SYSTEMS)}")
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    pythons = {s: Path(sys.executable) for s in ("mtlrec", "bare", *VARIANTS)}
    skipped: dict[str, str] = {}
    for s in systems:
        if s in PEERS:
            py, why = ensure_peer(s, work / "venvs", not args.no_install)
            if py is None:
                skipped[s] = why
                print(f"skipping {s}: {why}", flush=True)
            else:
                pythons[s] = py
    header = (
        f"threads={args.threads} (torch.set_num_threads, OMP_NUM_THREADS, MKL_NUM_THREADS)  "
        f"OMP_WAIT_POLICY={args.omp_wait_policy}  cpu_count={os.cpu_count()}  "
        f"python {platform.python_version()}  {platform.machine()}"
    )
    print(header, flush=True)
    command = "python scripts/bench.py " + " ".join(sys.argv[1:] if argv is None else argv)
    md = [f"Command: `{command.strip()}`", "", header, ""]
    names = ["census", "synthetic_ccp"] if args.workload == "all" else [args.workload]
    for name in names:
        wl = dict(WORKLOADS[name])
        if args.epochs:
            wl["epochs"] = args.epochs
        tag = census_tag() if name == "census" else f"synthetic_ccp-{args.rows}"
        data = work / "data" / tag
        if not (data / "arrays.npz").exists():
            print(f"preparing {tag} in {data} ...", flush=True)
            data.mkdir(parents=True, exist_ok=True)
            # In a child process, so that generation memory never counts against anyone.
            code = (
                f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import bench; "
                + (
                    f"bench.prepare_census(bench.Path({str(data)!r}))"
                    if name == "census"
                    else f"bench.prepare_synthetic(bench.Path({str(data)!r}), {args.rows})"
                )
            )
            subprocess.run([sys.executable, "-c", code], check=True)
        meta = json.loads((data / "meta.json").read_text())
        print(f"data: {meta.get('source', '?')}", flush=True)
        runs: dict[str, list[dict]] = {s: [] for s in systems if s not in skipped}
        for rep in range(args.repeats):
            for s in runs:
                if s in PEERS and rep >= (args.peer_repeats or args.repeats):
                    continue
                out = work / "results" / tag / f"{s}-{rep}.json"
                out.parent.mkdir(parents=True, exist_ok=True)
                if out.exists():
                    out.unlink()
                res = run_worker(pythons[s], s, data, wl, args, out)
                runs[s].append(res)
                brief = res.get("error", "").splitlines()[-1:] or [
                    f"train {res['train_samples_per_s']:,.0f}/s  eval {res['eval_samples_per_s']:,.0f}/s  "
                    f"rss {res['peak_rss_mib']:,.0f} MiB  auc {res['auc']}"
                ]
                print(f"[{tag}] rep {rep + 1} {s:14s} {brief[0]}", flush=True)
        rows = [summarize(s, r) for s, r in runs.items()]
        rows += [{"system": s, "error": why} for s, why in skipped.items()]
        desc = (
            f"{name} ({wl['model']}, {wl['epochs']} epoch(s), batch {BATCH}, Adam {LR:g}; "
            f"{len(meta['vocabs'])} sparse + {len(meta['dense'])} dense features; "
            f"data: {meta.get('source', '?')})"
        )
        text = table(name, wl, rows, meta)
        print(f"\n{desc}\n{text}\n", flush=True)
        md += [f"**{desc}**", "", text, ""]
    if args.markdown:
        Path(args.markdown).write_text("\n".join(md) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
