"""Seed study: census MMoE over many seeds, mtlrec and a bare PyTorch loop, each task's AUC spread.

    python scripts/bench_seeds.py --data-dir DATA                                  # seeds 1-20, both
    python scripts/bench_seeds.py --data-dir DATA --impl mtlrec model.tower_output_init=torch
                                                              # extra `mtlrec train` overrides
    python scripts/bench_seeds.py --data-dir DATA --impl bare --bare-output-init balanced

First prepare census (docs/datasets.md): `mtlrec prepare dataset=census dataset.raw_dir=DIR
data_dir=DATA`. `mtlrec` runs are `experiment=census_mmoe` (8 experts [16], towers [8], embedding
4, Adam 1e-3, batch 1024) for --epochs epochs (default 5, no early stopping), in-process; run dirs
go under --out (refused if it already holds runs). `bare` is this file's own ~60-line MMoE and loop
in plain PyTorch on the same prepared rows (nn.Linear layers with their default init, one
nn.Embedding of std 0.01, Adam 1e-3, batch 1024 reshuffled each epoch, the short last batch kept);
--bare-output-init balanced alternates the signs of its towers' output weights (as
model.tower_output_init=balanced). One torch thread, one run at a
time. Per implementation and task: min / median / std of the test AUC over the seeds and the seeds
more than --gap (0.01) below the median; per seed the AUCs and how many of each tower's 8 output
weights start positive (8 or 0: the sign trap, docs/results.md "Seed study"). Exit status 1 when a
seed is more than --gap below its median.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from hydra import compose, initialize_config_module  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402
from torch import nn  # noqa: E402

from mtlrec.data.loader import SplitTensors, load_splits  # noqa: E402
from mtlrec.data.spec import DatasetSpec  # noqa: E402
from mtlrec.experiment import run  # noqa: E402
from mtlrec.models import build_model  # noqa: E402
from mtlrec.run_process import seed_everything  # noqa: E402

TASKS = ("income", "marital")


def seed_list(text: str) -> list[int]:
    """'1-20' or '1,5,8' -> the seeds."""
    if "-" in text:
        first, last = (int(x) for x in text.split("-"))
        return list(range(first, last + 1))
    return [int(x) for x in text.split(",")]


def compose_cfg(seed: int, args: argparse.Namespace, extra: list[str]):
    overrides = [
        "experiment=census_mmoe",
        f"data_dir={args.data_dir}",
        f"seed={seed}",
        f"trainer.epochs={args.epochs}",
        "trainer.patience=null",
        "trainer.num_threads=1",
        "trainer.progress=false",
        "device=cpu",
        *extra,
    ]
    with initialize_config_module(config_module="mtlrec.conf", version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def positive_output_weights(towers: torch.Tensor) -> list[int]:
    """Per task: how many of its tower's output weights ([T, hidden]) are > 0."""
    return (towers > 0).sum(-1).tolist()


def train_mtlrec(seed: int, args: argparse.Namespace, extra: list[str]) -> dict[str, float]:
    cfg = compose_cfg(seed, args, extra)
    spec = DatasetSpec.load(args.data_dir / "census-g1")
    seed_everything(seed)  # the draws `mtlrec train` makes first: the run's initial towers
    model, _ = build_model(OmegaConf.to_container(cfg.model, resolve=True), spec, spec.tasks)
    start = positive_output_weights(model.towers.linears[-1].weight[:, :, 0])
    run_dir = args.out / f"mtlrec_seed_{seed}"
    run(cfg, run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    result = {task: metrics[f"test/{task}_auc"] for task in TASKS}
    return {**result, **{f"{t}_pos": p for t, p in zip(TASKS, start, strict=True)}}


class BareMMoE(nn.Module):
    """MMoE in plain PyTorch: per-expert nn.Linear, per-task nn.Linear gates and towers."""

    def __init__(self, vocab: int, fields: int, dense: int, tasks: int):
        super().__init__()
        self.embedding = nn.Embedding(vocab, 4)
        nn.init.normal_(self.embedding.weight, std=0.01)
        width = fields * 4 + dense
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(width, 16), nn.ReLU()) for _ in range(8)
        )
        self.gates = nn.ModuleList(nn.Linear(width, 8) for _ in range(tasks))
        self.towers = nn.ModuleList(
            nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 1)) for _ in range(tasks)
        )

    def forward(self, sparse: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.embedding(sparse).flatten(1), dense], dim=1)
        experts = torch.stack([e(x) for e in self.experts], dim=1)  # [B, 8, 16]
        logits = []
        for gate, tower in zip(self.gates, self.towers, strict=True):
            weights = torch.softmax(gate(x), dim=-1).unsqueeze(-1)  # [B, 8, 1]
            logits.append(tower((weights * experts).sum(1)).squeeze(-1))
        return torch.stack(logits, dim=1)  # [B, tasks]


def train_bare(seed: int, splits: dict[str, SplitTensors], spec: DatasetSpec, args) -> dict:
    torch.manual_seed(seed)
    columns = [spec.label_index(t.label) for t in spec.tasks]
    vocab = sum(f.vocab_size for f in spec.sparse)
    model = BareMMoE(vocab, len(spec.sparse), len(spec.dense), len(columns))
    if args.bare_output_init == "balanced":
        with torch.no_grad():
            for tower in model.towers:
                tower[-1].weight.abs_()
                tower[-1].weight[:, ::2].neg_()  # [1 output, 8 hidden]: -, +, -, + ...
    start = positive_output_weights(torch.stack([t[-1].weight[0] for t in model.towers]))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    train, order = splits["train"], torch.Generator().manual_seed(seed)
    for _ in range(args.epochs):
        perm = torch.randperm(len(train), generator=order)
        for first in range(0, len(train), 1024):
            batch = train.take(perm[first : first + 1024])
            logits = model(batch.sparse, batch.dense)
            loss = F.binary_cross_entropy_with_logits(logits, batch.labels[:, columns])
            optimizer.zero_grad()
            (loss * len(columns)).backward()  # the sum of the per-task means, as mtlrec
            optimizer.step()
    test = splits["test"]
    with torch.no_grad():
        scores = model(test.sparse, test.dense)
    result = {
        task: float(roc_auc_score(test.labels[:, c].numpy(), scores[:, k].numpy()))
        for k, (task, c) in enumerate(zip(TASKS, columns, strict=True))
    }
    return {**result, **{f"{t}_pos": p for t, p in zip(TASKS, start, strict=True)}}


def report(name: str, results: dict[int, dict[str, float]], gap: float) -> bool:
    """Print one implementation's per-seed table and per-task summary; True when no seed is more
    than `gap` below a median."""
    print(f"\n{name}: seed  " + "  ".join(f"{t}_auc {t}_positive_at_start" for t in TASKS))
    for seed, r in results.items():
        print(f"{seed:>4}  " + "  ".join(f"{r[t]:.4f} {int(r[t + '_pos'])}/8" for t in TASKS))
    ok = True
    for task in TASKS:
        values = [r[task] for r in results.values()]
        median = statistics.median(values)
        low = [s for s, r in results.items() if r[task] < median - gap]
        ok = ok and not low
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        print(
            f"{name} {task}: min {min(values):.4f}  median {median:.4f}  std {std:.4f}  "
            f"seeds more than {gap} below the median: {low or 'none'}"
        )
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="data_dir holding census-g1")
    parser.add_argument("--seeds", default="1-20", help="'1-20' or '1,5,8'")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--gap", type=float, default=0.01)
    parser.add_argument("--impl", default="mtlrec,bare", help="mtlrec, bare or both")
    parser.add_argument("--bare-output-init", choices=("torch", "balanced"), default="torch")
    parser.add_argument("--out", type=Path, default=Path("outputs/bench_seeds"))
    parser.add_argument("overrides", nargs="*", help="extra `mtlrec train` overrides")
    args = parser.parse_args()
    args.data_dir = args.data_dir.expanduser().resolve()
    if args.out.exists() and any(args.out.iterdir()):
        print(f"{args.out} already holds runs; pass another --out", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    spec = DatasetSpec.load(args.data_dir / "census-g1")
    splits = load_splits(args.data_dir / "census-g1", spec, spec.tasks, ("train", "test"))
    ok, done = True, {}
    for impl in args.impl.split(","):
        done[impl] = {}
        for seed in seed_list(args.seeds):
            if impl == "mtlrec":
                done[impl][seed] = train_mtlrec(seed, args, args.overrides)
            else:
                done[impl][seed] = train_bare(seed, splits, spec, args)
            print(f"{impl} seed {seed}: " + json.dumps(done[impl][seed]), flush=True)
    for impl, results in done.items():
        ok = report(impl, results, args.gap) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
