"""The best weights of tables checkpointed as table files are kept as those files, not as a copy
in memory (mtlrec/training/best_files.py): the run's test metrics and checkpoints equal those
of the same run keeping the copy (`checkpoint.table_files_min_rows=null`) to the bit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import TINY, compose_train
from helpers.stops import StopAfter
from mtlrec.models import seeded_init
from mtlrec.training import best_files
from mtlrec.training.checkpoint import LAST, TrainState, load_checkpoint, make_payload
from mtlrec.training.signals import StopRequest, TrainingInterrupted

STEPS = 87  # an epoch of 4000 rows' train split in batches of 32
# 3 epochs, no early stop, lr 0.003: epoch 1 is the best (checked), 2 and 3 change rows after it
SPARSE = [*TINY, "trainer.epochs=3", "trainer.batch_size=32", "trainer.patience=null", "trainer.lr=0.003",
          "trainer.embedding_optimizer=sparse_adam"]  # fmt: skip
FILES = [*SPARSE, "checkpoint.table_files_min_rows=0", "checkpoint.every_n_steps=16"]


@pytest.fixture(scope="module")
def copied(tmp_path_factory):
    """copied(seeded): the run keeping the best weights as a copy in memory (its tables inside
    last.pt), its tables drawn from their own generators (as 100k+ row tables are) or not."""
    from mtlrec.experiment import run

    runs: dict[bool, Path] = {}

    def get(seeded: bool) -> Path:
        if seeded not in runs:
            runs[seeded] = tmp_path_factory.mktemp("copied") / "run"
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(seeded_init, "SEEDED_FROM_ROWS", 0 if seeded else 10**9)
                run(compose_train([*SPARSE, "checkpoint.table_files_min_rows=null"]), runs[seeded])
        return runs[seeded]

    return get


def first_entries(run_dir: Path) -> tuple[str, str]:
    """The kinds of the first entries of best.pt's and last.pt's chains."""
    chains = [
        torch.load(run_dir / "checkpoints" / name, weights_only=True)["table_files"]["chains"]
        for name in ("best.pt", LAST)
    ]
    return chains[0]["last"][0]["kind"], chains[1]["last"][0]["kind"]


def assert_same_run(run_dir: Path, ref_dir: Path) -> None:
    got, ref = (json.loads((d / "metrics.json").read_text()) for d in (run_dir, ref_dir))
    assert got["status"] == "completed" and got["metrics"] == ref["metrics"]
    assert got["best_epoch"] == ref["best_epoch"] == 1 and got["epochs_run"] == 3
    for name in ("best.pt", LAST):
        a, b = (load_checkpoint(d / "checkpoints" / name) for d in (run_dir, ref_dir))
        for part in ("model_state", "train_state"):
            x = a[part]["best_state"] if part == "train_state" else a[part]
            y = b[part]["best_state"] if part == "train_state" else b[part]
            assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), name


@pytest.mark.parametrize(
    ("seeded", "compact", "chains"),
    [
        (True, False, ("init", "init")),
        (False, False, ("base", "base")),
        (True, True, ("base", "base")),
    ],
    ids=["init+deltas", "base+deltas", "new-base-since-best"],
)
def test_best_weights_restored_from_table_files_equal_the_copy_in_memory(
    tmp_path, copied, best_loads, monkeypatch, seeded, compact, chains
):
    """Epoch 1 is the best; at the end, only the rows changed since its checkpoint are read
    back from its files (its chain starting at the tables' seeded init, or at a base file).
    After a new base since the best epoch, every row is read back."""
    from mtlrec.experiment import run

    monkeypatch.setattr(seeded_init, "SEEDED_FROM_ROWS", 0 if seeded else 10**9)
    # a new base at every checkpoint but the first, or never
    monkeypatch.setattr("mtlrec.training.table_files.COMPACT_FRACTION", 0.0 if compact else 9.0)
    run(compose_train(FILES), tmp_path / "run")
    assert first_entries(tmp_path / "run") == chains
    assert_same_run(tmp_path / "run", copied(seeded))
    end = best_loads[0]  # this run's (a reference run made here comes after)
    assert end["held"] == end["keys"] and len(end["keys"]) >= 1  # no table copied
    if compact:
        assert end["rows"] == end["table_rows"]
    else:
        assert 0 < end["rows"] < end["table_rows"]


def test_a_run_resumed_after_its_best_epoch_restores_the_best_weights_from_the_files(
    tmp_path, copied, best_loads, monkeypatch
):
    """Stopped in epoch 3 (its last checkpoint's best weights: references to epoch 1's files),
    resumed: the resumed process holds them as the files too, and ends as the copying run."""
    from mtlrec.experiment import run

    monkeypatch.setattr(seeded_init, "SEEDED_FROM_ROWS", 0)  # the chains start at the init
    monkeypatch.setattr("mtlrec.training.table_files.COMPACT_FRACTION", 9.0)  # no new base
    monkeypatch.setattr(StopAfter, "k", 2 * STEPS + 20)
    monkeypatch.setattr("mtlrec.experiment.StopRequest", StopAfter)
    run_dir = tmp_path / "run"
    with pytest.raises(TrainingInterrupted):
        run(compose_train(FILES), run_dir)
    raw = torch.load(run_dir / "checkpoints" / LAST, weights_only=True)
    state = raw["train_state"]
    assert raw["table_files"]["best"] == "best" and (state["epoch"], state["step"]) == (3, 18)
    monkeypatch.setattr("mtlrec.experiment.StopRequest", StopRequest)
    run(compose_train([*FILES, f"resume={run_dir}"]), run_dir)
    assert_same_run(run_dir, copied(True))
    end = best_loads[0]  # this run's (a reference run made here comes after)
    assert end["held"] == end["keys"] and len(end["keys"]) >= 1
    assert 0 < end["rows"] < end["table_rows"]


def test_a_placeholder_is_never_written_as_weights():
    """A kept best state's placeholder that no table file turns into a reference fails the
    checkpoint's write, loudly: it has no values to store."""
    from torch import nn

    class Spec:  # what make_payload reads of a dataset spec
        def to_dict(self) -> dict:
            return {}

    table = nn.Embedding(10, 4)
    held = best_files.placeholder(table.weight)
    assert held.is_meta and held.shape == (10, 4) and held.dtype == torch.float32
    state = TrainState(1, 0, torch.zeros(1), {}, {}, [], {"weight": held}, 0.0, 0)
    with pytest.raises(NotImplementedError, match="meta"):
        make_payload(table, None, {"model": {"name": "x"}}, Spec(), (), 1, state)  # type: ignore[arg-type]


def test_a_chain_from_a_seeded_init_gives_the_values_of_the_rows_asked_for():
    """Rows no delta holds come from the seeded init, drawn for their chunks only; rows of the
    deltas from the newest delta holding them (rows used only after the best epoch need the
    first: a stream or a sample of the data per epoch)."""
    init = seeded_init.SeededInit(seed=7, std=0.1, fingerprint="", chunk_rows=16)
    shape = [50, 4]
    name = "model_state/weight"
    fill = {"shape": shape, "dtype": "float32", "seeded": init.to_dict()}
    entry = {"kind": "init", "fills": {name: fill}}
    ids = [torch.tensor([3, 20, 41]), torch.tensor([20, 33])]
    deltas = [
        {
            "kind": "delta",
            "rows": {name: r},
            "values": {name: torch.full((len(r), 4), float(k + 1))},
        }
        for k, r in enumerate(ids)
    ]
    expected = init.draw(shape)
    for d in deltas:
        expected[d["rows"][name]] = d["values"][name]
    rows = torch.tensor([49, 20, 3, 0, 33, 41, 17])
    got = best_files._values_at([entry, *deltas], name, rows)
    assert torch.equal(got, expected[rows])
    assert torch.equal(got[1], torch.full((4,), 2.0)) and not torch.equal(got[0], got[3])


def test_a_layer_loading_its_tables_together_gets_the_best_weights_of_those_not_in_files():
    """TorchRec's layer loads all its tables or none: the tables the files hold are handed to
    it as they are now (restored from the files after), the others their kept best weights."""
    from torch import nn

    class Together(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Parameter(torch.zeros(6, 2)), nn.Parameter(torch.zeros(3, 2))

        def _load_from_state_dict(self, state, prefix, meta, strict, missing, unexpected, errors):
            if {f"{prefix}a", f"{prefix}b"} <= state.keys():  # all or nothing
                super()._load_from_state_dict(
                    state, prefix, meta, strict, missing, unexpected, errors
                )

    class Files:  # what load asks of BestFiles
        restored: set[str] = set()
        best_chain: list = []

        def restore(self, keys: set[str], chain=None, holding=None) -> int:
            self.restored = keys
            with torch.no_grad():
                model.a[2].fill_(5.0)  # the rows changed since the best epoch, read back
            return 1

    model = Together()
    best = {"a": best_files.placeholder(model.a), "b": torch.full((3, 2), 7.0)}
    files = Files()
    best_files.load(model, best, files)  # type: ignore[arg-type]
    assert files.restored == {"a"} and torch.equal(model.b, torch.full((3, 2), 7.0))
    assert model.a.sum().item() == 10.0  # a: as it was, then its restored row


def test_the_best_epochs_files_are_read_by_the_checkpoints_reader_without_hashing(
    tmp_path, monkeypatch
):
    """BestFiles reads the best epoch's files with table_files' one reader (memory-mapped, not
    hashed: this process wrote them): the restored rows are the best epoch's; a file removed
    while the run trained, or replaced by another file, is one line naming it."""
    from torch import nn

    from mtlrec.errors import MtlrecError
    from mtlrec.training import table_files
    from mtlrec.training.row_adam import RowAdam

    def train(ids: torch.Tensor) -> None:
        opt.zero_grad()
        table(ids).pow(2).sum().backward()
        opt.step()

    torch.manual_seed(0)
    table = nn.Embedding(500, 4, sparse=True)
    opt = RowAdam(table.parameters(), lr=0.01, catch_up=False)
    files = table_files.TableFiles(tmp_path, opt, 0, lambda obj, path: torch.save(obj, path))
    files.directory.mkdir()
    kept = best_files.BestFiles(files, table, table)
    assert kept.keys == {"weight"}
    train(torch.arange(0, 500, 3))
    files.externalize({"model_state": {"weight": table.weight.detach()}}, 1)
    files.mark_best()
    best = table.weight.detach().clone()
    train(torch.arange(0, 40))
    files.externalize({"model_state": {"weight": table.weight.detach()}}, 2)
    train(torch.arange(30, 60))  # after the newest checkpoint
    hashed = []
    monkeypatch.setattr(table_files, "file_digest", lambda path: hashed.append(path))
    assert kept.restore({"weight"}) == 60 and hashed == []
    assert torch.equal(table.weight, best)

    delta = files.directory / files.chain[-1]["file"]
    delta.unlink()
    with pytest.raises(MtlrecError) as e:
        kept.restore({"weight"})
    assert str(e.value) == (
        f"{files.directory}: {delta.name}, a table file of the best epoch, is missing (removed "
        "while the run trained), so its best weights cannot be restored; leave checkpoints/ "
        "alone while a run trains"
    )
    torch.save({"weight": best}, delta)  # a file that is no table file in its place
    with pytest.raises(MtlrecError, match=f"^{files.directory}: {delta} is not an mtlrec table"):
        kept.restore({"weight"})
    delta.write_bytes(delta.read_bytes()[:100])  # damaged (not hashed: written by this process)
    with pytest.raises(MtlrecError, match=f"^{files.directory}: {delta} is not an mtlrec table"):
        kept.restore({"weight"})
