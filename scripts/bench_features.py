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

    python scripts/bench_features.py --history-lens 10,50,200      # target attention vs mean

With --history-lens: MovieLens-100K-sized data instead (80k rows; user 943, item 1,682, gender 2,
occupation 21, zip3 795 ids, 1 dense column, a genres bag of up to 6 of 19 values and a history
sequence sharing the item field's rows, lengths uniform in 1..L or all L with --lengths full),
batch 1024, embedding 16: for each history length L the history is pooled by target attention
(over the item) and by mean, measured alternately in the same process (samples per CPU second,
median of --repeats), and the ratio target attention / mean is reported.
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
            torch.randint(0, f.vocab_size, (rows,), generator=gen) + offsets[f.name]
        )
    for f in spec.multi:
        a, b = layout.sparse[f.name]
        ids = torch.randint(0, f.vocab_size, (rows, f.max_len), generator=gen)
        ids += offsets[f.name]
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


MOVIELENS = (("item", 1682), ("user", 943), ("gender", 2), ("occupation", 21), ("zip3", 795))


def movielens_spec(history_len: int, pooling: str) -> DatasetSpec:
    """The shape of `mtlrec prepare dataset=movielens` (MovieLens 100K) with a given history."""
    feats = [FeatureSpec(name, "sparse", vocab) for name, vocab in MOVIELENS]
    feats.append(FeatureSpec("genres", "bag", 19, max_len=6, pooling="mean"))
    target = "item" if pooling == "target_attention" else None
    feats.append(
        FeatureSpec("history", "sequence", 1682, max_len=history_len, shares_vocab_with="item",
                    pooling=pooling, target=target)
    )  # fmt: skip
    feats.append(FeatureSpec("age", "dense"))
    tasks = (TaskSpec("like", "like"), TaskSpec("rating", "rating", type="regression"))
    spec = DatasetSpec("movielens-like", tuple(feats), ("like", "rating"), tasks)
    spec.validate()
    return spec


def cpu_samples_per_second(spec: DatasetSpec, data, args) -> float:
    """Like steps_per_second, timed by the process's CPU time (steadier on a shared machine)."""
    clock = time.perf_counter
    time.perf_counter = time.process_time  # type: ignore[assignment]
    try:
        return steps_per_second(spec, data, args, torch.device("cpu"))
    finally:
        time.perf_counter = clock  # type: ignore[assignment]


def history_study(args) -> None:
    """Target attention vs mean pooling of the history, per history length, in one process."""
    print("| history length | target attention samples/CPU-s | mean samples/CPU-s | ratio |")
    print("| ---: | ---: | ---: | ---: |")
    args = argparse.Namespace(**{**vars(args), "rows": 80_000, "batch": 1024})  # MovieLens-sized
    for length in (int(v) for v in args.history_lens.split(",")):
        data = None
        rates: dict[str, list[float]] = {"target_attention": [], "mean": []}
        for _ in range(args.repeats):  # alternated: a change of load hits both alike
            for pooling in rates:
                spec = movielens_spec(length, pooling)
                if data is None:  # the same rows for both poolings
                    data = make_data(spec, args.rows, torch.Generator().manual_seed(0))
                    if args.lengths == "full":
                        data[0][data[0] < 0] = 0  # every position a real item (item 0 is OOV)
                once = argparse.Namespace(**{**vars(args), "repeats": 1})
                rates[pooling].append(cpu_samples_per_second(spec, data, once))
        ta, mean = (statistics.median(rates[p]) for p in ("target_attention", "mean"))
        print(f"| {length} | {ta:,.0f} | {mean:,.0f} | {ta / mean:.2f}x |", flush=True)


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
    p.add_argument("--history-lens", help="e.g. 10,50,200: the target-attention study instead")
    p.add_argument("--lengths", choices=["uniform", "full"], default="uniform")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.history_lens:
        history_study(args)
        return
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
