"""Same seed, data and config on CPU -> identical metrics.json values and identical weights."""

from __future__ import annotations

import torch

from mtlrec.experiment import set_deterministic

MMOE = ["model=mmoe", "model.num_experts=2", "model.dropout=0.2"]  # dropout: RNG in training


def state(run_dir, name="best.pt"):
    return torch.load(run_dir / "checkpoints" / name, weights_only=False)


def test_same_seed_same_numbers_and_weights(train_tiny):
    a_dir, a = train_tiny(MMOE, name="a")
    b_dir, b = train_tiny(MMOE, name="b")
    assert a["metrics"] == b["metrics"] and a["best_value"] == b["best_value"]
    for name in ("best.pt", "last.pt"):
        wa, wb = state(a_dir, name)["model_state"], state(b_dir, name)["model_state"]
        assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # The seeds are recorded in metrics.json and in every checkpoint.
    assert (a["seed"], a["data_order_seed"]) == (42, 42)
    assert (state(a_dir)["seed"], state(a_dir)["data_order_seed"]) == (42, 42)

    # ... and each seed matters: model init (seed) and the order of the rows (data_order_seed).
    c_dir, c = train_tiny([*MMOE, "data_order_seed=7"], name="c")
    assert c["data_order_seed"] == 7 and c["seed"] == 42
    assert c["metrics"] != a["metrics"]
    d_dir, d = train_tiny([*MMOE, "seed=1", "data_order_seed=42"], name="d")
    wa, wd = state(a_dir)["model_state"], state(d_dir)["model_state"]
    assert not all(torch.equal(wa[k], wd[k]) for k in wa)


def test_deterministic_flag_turns_on_torch_deterministic_algorithms(train_tiny, monkeypatch):
    seen = []
    real = torch.use_deterministic_algorithms

    def spy(on, **kw):
        seen.append(on)
        real(on, **kw)

    monkeypatch.setattr(torch, "use_deterministic_algorithms", spy)
    try:
        _, m = train_tiny(["trainer.deterministic=true", "trainer.epochs=1"], name="det")
        assert seen == [True] and torch.are_deterministic_algorithms_enabled()
        assert m["status"] == "completed"
    finally:
        set_deterministic(False)
    assert not torch.are_deterministic_algorithms_enabled()
