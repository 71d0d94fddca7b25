"""Checkpoint integrity: per-tensor SHA-256 checked on load, weights_only unpickling, fallbacks."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import pytest
import torch

from mtlrec.errors import MtlrecError
from mtlrec.training.checkpoint import (
    BEST,
    FORMAT,
    INTEGRITY_KEY,
    LAST,
    PREVIOUS,
    TrainState,
    load_checkpoint,
    load_resumable,
    tensor_digest,
)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from conftest import run_training

    return run_training(tmp_path_factory.mktemp("ckpt"), ["trainer.epochs=2"])[0]


def flip_a_byte_of(path, tensor: torch.Tensor) -> None:
    """Corrupt one byte inside the stored data of `tensor` (the zip stores tensors uncompressed;
    the first copy is model_state's, pickled before the train state's best weights)."""
    raw = bytearray(path.read_bytes())
    data = tensor.contiguous().numpy().tobytes()
    at = raw.find(data)
    assert at >= 0
    raw[at + len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))


def largest_weight(payload: dict) -> tuple[str, torch.Tensor]:
    return max(payload["model_state"].items(), key=lambda kv: kv[1].numel())


def test_every_tensor_has_its_sha256_and_a_flipped_byte_is_named(run_dir, tmp_path):
    payload = load_checkpoint(run_dir / "checkpoints" / BEST)
    hashes = payload[INTEGRITY_KEY]
    name, weight = largest_weight(payload)
    assert hashes[f"model_state/{name}"] == tensor_digest(weight)
    assert "train_state/order_generator" in hashes
    assert len(hashes) > len(payload["model_state"])  # optimizer and train state too

    copy = tmp_path / BEST
    copy.write_bytes((run_dir / "checkpoints" / BEST).read_bytes())
    flip_a_byte_of(copy, weight)
    with pytest.raises(MtlrecError) as info:
        load_checkpoint(copy)
    assert str(info.value) == (
        f"{copy}: tensor model_state/{name} does not match its SHA-256 in the checkpoint (the "
        "file is corrupt); use an older checkpoint"
    )


def test_a_corrupt_last_falls_back_to_previous_with_a_warning(run_dir, tmp_path, caplog):
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    for name in (LAST, PREVIOUS):
        (ckpts / name).write_bytes((run_dir / "checkpoints" / name).read_bytes())
    name, weight = largest_weight(load_checkpoint(ckpts / LAST))
    flip_a_byte_of(ckpts / LAST, weight)
    with caplog.at_level(logging.WARNING):
        payload, path = load_resumable(ckpts)
    assert path == ckpts / PREVIOUS and payload["train_state"]["epoch"] == 1
    assert f"{ckpts / LAST}: tensor model_state/{name} does not match its SHA-256" in caplog.text
    assert f"falling back to {ckpts / PREVIOUS}" in caplog.text


def test_a_resume_from_previous_keeps_it_while_its_first_last_pt_is_written(
    run_dir, tmp_path, monkeypatch
):
    """A resume that skipped a damaged last.pt for last.prev.pt writes its first last.pt over
    the damaged one: last.prev.pt, the one complete checkpoint, is never moved over (a crash
    during that write left only the damaged file: nothing to resume from)."""
    import shutil

    from conftest import TINY, compose_train
    from mtlrec.experiment import run
    from mtlrec.runs.run_dir import RunDir

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    ckpts = copy / "checkpoints"
    flip_a_byte_of(ckpts / LAST, largest_weight(load_checkpoint(ckpts / LAST))[1])

    def crash(self, name, payload):  # the process dies while last.pt is written
        raise OSError("killed")

    monkeypatch.setattr(RunDir, "save_checkpoint", crash)
    with pytest.raises(OSError, match="^killed$"):
        run(compose_train([*TINY, f"resume={copy}"]), copy)
    payload, path = load_resumable(ckpts)
    assert path == ckpts / PREVIOUS and payload["train_state"]["epoch"] == 1


class Payload:
    """Not a tensor, dict or list: unpickling it would run code."""

    def __reduce__(self):
        return (print, ("this ran while loading",))


def test_checkpoints_load_weights_only(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "x": Payload()}, path)
    with pytest.raises(MtlrecError) as info:
        load_checkpoint(path)
    assert str(info.value) == (
        f"{path}: checkpoint is truncated or corrupt (UnpicklingError); use an older checkpoint"
    )


def test_train_state_round_trips_and_an_epoch_end_state_has_no_partial_epoch():
    state = TrainState(
        epoch=3,
        global_step=30,
        order_generator=torch.Generator().get_state(),
        rng={},
        early_stopping={"best_epoch": 2},
        history=[{"epoch": 1}],
        best_state={},
        train_time=1.5,
        train_rows=300,
    )
    d = state.to_dict()
    assert not state.mid_epoch and "perm" not in d and "loss_sums" not in d
    assert TrainState.from_dict({**d, "unknown_old_key": 1}) == state
    mid = TrainState.from_dict({**d, "step": 4, "perm": torch.arange(3), "epoch_seconds": 0.5})
    assert mid.mid_epoch and torch.equal(mid.to_dict()["perm"], torch.arange(3))


def test_best_is_a_second_name_of_the_best_epochs_checkpoint_file(run_dir):
    ckpts = run_dir / "checkpoints"
    best_epoch = json.loads((run_dir / "metrics.json").read_text())["best_epoch"]
    same_file = {n: (ckpts / n).samefile(ckpts / BEST) for n in (LAST, PREVIOUS)}
    assert same_file == {LAST: best_epoch == 2, PREVIOUS: best_epoch == 1}
    assert load_checkpoint(ckpts / BEST)["epoch"] == best_epoch


def test_best_keeps_its_epochs_bytes_when_last_moves_on_and_copies_without_hard_links(
    tmp_path, monkeypatch
):
    from mtlrec.runs.run_dir import RunDir
    from mtlrec.training.checkpoint import save_last

    runs = RunDir(tmp_path / "run")

    def write(payload, path):
        runs.save_checkpoint(path.name, payload)

    save_last(runs.checkpoints, {"epoch": torch.arange(3)}, write)
    runs.link_checkpoint(BEST, {"epoch": torch.arange(3)})
    best = runs.checkpoints / BEST
    assert best.stat().st_nlink == 2  # one file, two names
    for n in (5, 7):  # two more epochs: last.pt and last.prev.pt name other files
        save_last(runs.checkpoints, {"epoch": torch.arange(n)}, write)
    assert torch.equal(torch.load(best)["epoch"], torch.arange(3)) and best.stat().st_nlink == 1

    def no_hard_links(*args):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr("mtlrec.runs.run_dir.os.link", no_hard_links)
    runs.link_checkpoint(BEST, {"epoch": torch.arange(7)})
    assert torch.equal(torch.load(best)["epoch"], torch.arange(7)) and best.stat().st_nlink == 1
    assert sorted(p.name for p in runs.checkpoints.iterdir()) == [BEST, PREVIOUS, LAST]


def test_a_best_epochs_checkpoint_stores_the_weights_once(tmp_path):
    from torch import nn

    from mtlrec.training.checkpoint import INTEGRITY_KEY, best_weights, make_payload

    model = nn.Linear(500, 40)  # 80 KB of weights
    copy = {k: v.clone() for k, v in model.state_dict().items()}
    sizes = {}
    for current in (True, False):
        best = best_weights(model, copy, current)
        state = TrainState(0, 0, torch.Generator().get_state(), {}, {}, [], best, 0.0, 0)
        spec = SimpleNamespace(to_dict=dict)  # the payload's dataset spec: not what is tested
        payload = make_payload(model, None, {"model": {"name": "m"}}, spec, (), 1, state)
        torch.save(payload, tmp_path / f"{current}.pt")
        sizes[current] = (tmp_path / f"{current}.pt").stat().st_size
        loaded = load_checkpoint(tmp_path / f"{current}.pt")  # every SHA-256 checks out
        for k, v in loaded["train_state"]["best_state"].items():
            assert torch.equal(v, loaded["model_state"][k])
        digests = payload[INTEGRITY_KEY]
        assert digests["train_state/best_state/weight"] == digests["model_state/weight"]
    assert sizes[False] - sizes[True] > 500 * 40 * 4  # the second copy, gone
