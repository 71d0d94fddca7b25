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


def test_a_shard_is_drawn_alone_with_the_whole_draws_bits():
    """draw_part fills a block of rows and columns (a row_wise / column_wise shard, or both) with
    the whole table's bits, its rows starting and ending inside chunks, drawing only the chunks
    that hold them, at any thread count; a bfloat16 shard gets the float32 draw, cast."""
    init = SeededInit(11, 0.05, "", chunk_rows=100)
    shape = [1050, 8]  # 11 chunks, the last one short
    whole = init.draw(shape)
    drawn_chunks = []
    draw_chunk = SeededInit._draw_chunk

    def counting(self: SeededInit, chunk: int, out: torch.Tensor) -> None:
        drawn_chunks.append(chunk)
        draw_chunk(self, chunk, out)

    blocks = [(0, 0, 1050, 8), (150, 4, 300, 4), (999, 0, 51, 2), (420, 2, 1, 6), (700, 0, 0, 8)]
    for row, col, rows, cols in blocks:
        for workers in (1, 3):
            part = torch.full([rows, cols], float("nan"))
            drawn_chunks.clear()
            SeededInit._draw_chunk = counting  # type: ignore[method-assign]
            try:
                init.draw_part(shape, row, col, part, workers=workers)
            finally:
                SeededInit._draw_chunk = draw_chunk  # type: ignore[method-assign]
            expected = whole[row : row + rows, col : col + cols]
            assert torch.equal(part.view(torch.int32), expected.view(torch.int32)), (row, col)
            touched = set(range(row // 100, (row + rows + 99) // 100))
            assert sorted(drawn_chunks) == sorted(touched), (row, rows)  # no other chunk drawn
    half = torch.empty([300, 8], dtype=torch.bfloat16)
    init.draw_part(shape, 600, 0, half)
    assert torch.equal(half, whole[600:900].to(torch.bfloat16))


def test_a_table_drawn_in_shards_is_meta_and_keeps_its_seed(monkeypatch):
    """Inside drawn_in_shards() a seeded table is a meta tensor (nothing allocated or drawn)
    that carries the SeededInit a normal build draws (the same seed: the global generator
    moves as ever), without fingerprint; smaller tables are drawn as ever; inside loaded_next()
    as well it is meta, with no init (a checkpoint sets it)."""
    from mtlrec.models import seeded_init

    monkeypatch.setattr(seeded_init, "SEEDED_FROM_ROWS", 100)
    torch.manual_seed(5)
    drawn, small = seeded_init.new_table(1000, 4, 0.1), seeded_init.new_table(50, 4, 0.1)
    after = torch.rand(3)
    torch.manual_seed(5)
    with seeded_init.drawn_in_shards():
        deferred = seeded_init.new_table(1000, 4, 0.1)
        small_too = seeded_init.new_table(50, 4, 0.1)
        assert torch.equal(torch.rand(3), after)
    assert deferred.weight.is_meta and deferred.weight.shape == (1000, 4)
    init = seeded_init.deferred_init_of(deferred.weight)
    kept = seeded_init.seeded_init_of(drawn.weight)
    assert init == SeededInit(kept.seed, 0.1, "") and kept.fingerprint  # type: ignore[union-attr]
    assert seeded_init.seeded_init_of(deferred.weight) is None  # no fingerprint to trust
    assert torch.equal(init.draw([1000, 4]), drawn.weight.detach())  # type: ignore[union-attr]
    assert not small_too.weight.is_meta and torch.equal(small_too.weight, small.weight)
    assert seeded_init.deferred_init_of(drawn.weight) is None
    with seeded_init.loaded_next(), seeded_init.drawn_in_shards():
        loaded = seeded_init.new_table(1000, 4, 0.1)
    assert loaded.weight.is_meta and seeded_init.deferred_init_of(loaded.weight) is None
    with seeded_init.drawn_in_shards(False):
        assert not seeded_init.new_table(1000, 4, 0.1).weight.is_meta
