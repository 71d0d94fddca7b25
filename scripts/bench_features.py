"""Train throughput with multi-valued fields against single-id fields of the same count.

    python scripts/bench_features.py                          # 1M rows, CPU, 1 thread
    python scripts/bench_features.py --rows 200000 --steps 50 --pooling mean --device cuda

Two datasets of --rows rows, both with --singles single-id fields and 2 dense columns:
  single  + 2 more single-id fields (the baseline: the same number of fields)
  multi   + a bag of --bag-len values (lengths uniform in 1..bag_len, padded with -1) and a
          sequence of --seq-len items sharing the item field's rows, pooled by --pooling
          (target_attention: DIN over the item field, or mean / sum / max)
Each trains FieldEmbedding -> MLP [256, 128] -> 2 logits (BCE) with Adam, batch --batch, on
in-memory tensors: a batch is one index_select per tensor (no per-sample Python). Reported: train
samples/s (median of --repeats timed runs of --steps steps, after --warmup steps) and the ratio
multi / single.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from mtlrec.data.spec import DatasetSpec, FeatureSpec, TaskSpec
from mtlrec.models.features import FieldEmbedding

VOCAB = 100_000


def make_spec(singles: int, multi: bool, bag_len: int, seq_len: int, pooling: str) -> DatasetSpec:
    feats = [FeatureSpec("item", "sparse", VOCAB)]
    feats += [FeatureSpec(f"f{i}", "sparse", VOCAB) for i in range(singles - 1)]
    if multi:
        feats.append(FeatureSpec("bag", "bag", VOCAB, max_len=bag_len, pooling="mean"))
        target = "item" if pooling == "target_attention" else None
        feats.append(
            FeatureSpec(
                "seq",
                "sequence",
                VOCAB,
                max_len=seq_len,
                shares_vocab_with="item",
                pooling=pooling,
                target=target,
            )
        )
    else:
        feats += [FeatureSpec("extra0", "sparse", VOCAB), FeatureSpec("extra1", "sparse", VOCAB)]
    feats += [FeatureSpec("x0", "dense"), FeatureSpec("x1", "dense")]
    spec = DatasetSpec("bench", tuple(feats), ("a", "b"), (TaskSpec("a", "a"), TaskSpec("b", "b")))
    spec.validate()
    return spec


def make_data(spec: DatasetSpec, rows: int, gen: torch.Generator):
    layout, offsets = spec.layout, spec.vocab_offsets
    sparse = torch.empty((rows, layout.sparse_width), dtype=torch.long)
    for f in spec.sparse:
        sparse[:, layout.sparse[f.name][0]] = (
            torch.randint(0, VOCAB, (rows,), generator=gen) + offsets[f.name]
        )
    for f in spec.multi:
        a, b = layout.sparse[f.name]
        ids = torch.randint(0, VOCAB, (rows, f.max_len), generator=gen) + offsets[f.name]
        lengths = torch.randint(1, f.max_len + 1, (rows, 1), generator=gen)
        sparse[:, a:b] = torch.where(torch.arange(f.max_len) < lengths, ids, -1)
    dense = torch.randn((rows, layout.dense_width), generator=gen)
    labels = (torch.rand((rows, 2), generator=gen) < 0.2).float()
    return sparse, dense, labels


def steps_per_second(spec, data, args, device) -> float:
    torch.manual_seed(0)
    emb = FieldEmbedding(spec, args.dim)
    model = nn.Sequential(
        nn.Linear(emb.out_dim, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 2)
    )
    emb, model = emb.to(device), model.to(device)
    params = list(emb.parameters()) + list(model.parameters())
    opt = torch.optim.Adam(params, lr=1e-3)
    sparse, dense, labels = (t.to(device) for t in data)
    rows = sparse.shape[0]
    gen = torch.Generator().manual_seed(1)
    loss_fn = nn.BCEWithLogitsLoss()

    def run(n: int) -> None:
        for _ in range(n):
            idx = torch.randint(0, rows, (args.batch,), generator=gen).to(device)
            out = model(emb(sparse.index_select(0, idx), dense.index_select(0, idx)))
            loss = loss_fn(out, labels.index_select(0, idx))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    run(args.warmup)
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        run(args.steps)
        times.append(time.perf_counter() - start)
    return args.steps * args.batch / statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--singles", type=int, default=8)
    p.add_argument("--bag-len", type=int, default=20)
    p.add_argument("--seq-len", type=int, default=50)
    p.add_argument(
        "--pooling", default="target_attention", choices=["target_attention", "mean", "sum", "max"]
    )
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--batch", type=int, default=2048)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    results = {}
    for name, multi in (("single", False), ("multi", True)):
        spec = make_spec(args.singles, multi, args.bag_len, args.seq_len, args.pooling)
        data = make_data(spec, args.rows, gen)
        results[name] = steps_per_second(spec, data, args, device)
        print(
            f"{name:>6}: {len(spec.features) - 2} fields, sparse width {spec.layout.sparse_width}, "
            f"{results[name]:,.0f} train samples/s"
        )
    print(
        f"ratio multi/single: {results['multi'] / results['single']:.3f} "
        f"(bag {args.bag_len}, sequence {args.seq_len} with {args.pooling}; {args.rows:,} rows, "
        f"batch {args.batch}, {args.threads} thread(s), {args.device})"
    )


if __name__ == "__main__":
    main()
