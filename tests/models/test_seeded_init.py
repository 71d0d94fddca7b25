"""The seeded draw of big tables: bit-exact whatever the number of threads or the dtype path."""

from __future__ import annotations

import pytest
import torch

from mtlrec.models.seeded_init import SeededInit, _chunk_seed


def by_definition(init: SeededInit, shape: list[int], dtype: torch.dtype) -> torch.Tensor:
    """The format's definition, chunk by chunk: randint(0, 2^24) - 2^23, cast, times a / 2^23."""
    half = 1 << 23
    scale = torch.tensor(3**0.5 * init.std / half, dtype=dtype)
    out = []
    for chunk in range((shape[0] + init.chunk_rows - 1) // init.chunk_rows):
        rows = min(init.chunk_rows, shape[0] - chunk * init.chunk_rows)
        g = torch.Generator().manual_seed(_chunk_seed(init.seed, chunk))
        ints = torch.randint(0, 2 * half, (rows, *shape[1:]), generator=g, dtype=torch.int32)
        out.append((ints - half).to(dtype) * scale)
    return torch.cat(out)


def test_threads_draw_the_same_bits_as_one_thread_and_as_the_definition():
    init = SeededInit(2026, 0.02, "", chunk_rows=700)
    shape = [5000, 6]  # 8 chunks, the last one short
    one = torch.empty(shape)
    init.draw_into(one, workers=1)
    assert torch.equal(
        one.view(torch.int32), by_definition(init, shape, torch.float32).view(torch.int32)
    )
    for workers in (2, 3, 8, 64):
        many = torch.full(shape, float("nan"))  # every row must be written
        init.draw_into(many, workers=workers)
        assert torch.equal(many.view(torch.int32), one.view(torch.int32)), workers
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # the default: torch's thread count
    try:
        assert torch.equal(init.draw(shape).view(torch.int32), one.view(torch.int32))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(init.draw_rows(shape, torch.tensor([4999, 0, 2100])), one[[4999, 0, 2100]])


def test_other_dtypes_are_the_definition_too():
    init = SeededInit(7, 0.1, "", chunk_rows=300)
    for dtype in (torch.float64, torch.bfloat16):  # (float16 cannot hold 2^23 nor a / 2^23)
        drawn = init.draw([1000, 4], dtype)
        assert drawn.dtype == dtype
        assert torch.equal(drawn, by_definition(init, [1000, 4], dtype)), dtype


def test_an_error_in_a_worker_is_raised(monkeypatch):
    drawn = SeededInit._draw_chunk

    def failing(self: SeededInit, chunk: int, out: torch.Tensor) -> None:
        if chunk == 3:
            raise RuntimeError("chunk 3 failed")
        drawn(self, chunk, out)

    monkeypatch.setattr(SeededInit, "_draw_chunk", failing)
    with pytest.raises(RuntimeError, match="chunk 3 failed"):
        SeededInit(7, 0.1, "", chunk_rows=10).draw_into(torch.empty(60, 2), workers=2)


def test_a_table_whose_weights_are_loaded_next_is_not_drawn_and_the_generator_moves_the_same(
    monkeypatch,
):
    """Inside loaded_next() a seeded table is allocated, not drawn, and holds no SeededInit;
    the global generator moves as when drawing (what comes after draws the same numbers)."""
    from mtlrec.models import seeded_init

    monkeypatch.setattr(seeded_init, "SEEDED_FROM_ROWS", 100)
    draws = []
    drawn = SeededInit.draw_into
    monkeypatch.setattr(SeededInit, "draw_into", lambda s, w, *a: draws.append(s) or drawn(s, w))
    torch.manual_seed(3)
    table = seeded_init.new_table(1000, 4, 0.1)
    after_drawn = torch.rand(3)
    assert len(draws) == 1 and seeded_init.seeded_init_of(table.weight) == SeededInit(
        draws[0].seed, 0.1, seeded_init.fingerprint(table.weight)
    )
    torch.manual_seed(3)
    with seeded_init.loaded_next():
        loaded = seeded_init.new_table(1000, 4, 0.1)
        assert torch.equal(torch.rand(3), after_drawn) and len(draws) == 1
        small = seeded_init.new_table(50, 4, 0.1)  # under SEEDED_FROM_ROWS: drawn as ever
    assert loaded.weight.shape == (1000, 4) and seeded_init.seeded_init_of(loaded.weight) is None
    assert small.weight.std() > 0.05
    with seeded_init.loaded_next(False):  # when=False: drawn
        seeded_init.new_table(1000, 4, 0.1)
    assert len(draws) == 2
