"""The daily loop of docs/training.md through the real `mtlrec` command, on three generated days
whose later days add users and items: day 2 prepared with dataset.vocab_from=day 1, trained with
init_from=day 1's run, starts at day 1's quality (a cold model starts at chance); the rows of
day 1's values are day 1's rows; day 1's run dir is never written; day 3 continues from day 2."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from helpers.cli import mtlrec
from helpers.days import write_config, write_day

COMMON = ["model=mmoe", "trainer.batch_size=256", "trainer.num_threads=1", "device=cpu"]
COMMON += ["trainer.progress=false"]
# trainer.lr=1e-7 for one epoch: the val AUC of the model as it starts (it barely moves)
AS_IT_STARTS = ["trainer.epochs=1", "trainer.lr=1e-7"]


def tree(run_dir: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(run_dir)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(run_dir.rglob("*"))
    }


def prepare(cwd: Path, day: int, *extra: str, cli: bool = True) -> None:
    """`mtlrec prepare` of one day, through the command (or, to save a process, in this one)."""
    args = [
        "dataset=days",
        f"dataset.raw_dir={cwd}/raw/day{day}",
        f"dataset.path={cwd}/data/day{day}",
    ]
    if cli:
        out = mtlrec("prepare", "--config-dir", "conf", *args, *extra, cwd=cwd)
        assert out.returncode == 0, out.stderr
        return
    from mtlrec.data.prepare import compose_prepare
    from mtlrec.data.sources import prepare_dataset

    prepare_dataset(compose_prepare([*args, *extra], str(cwd / "conf"))["dataset"])


def train(cwd: Path, day: int, run: str, *extra: str) -> dict:
    args = ["--config-dir", "conf", "dataset=days", f"dataset.path=data/day{day}", *COMMON]
    out = mtlrec("train", *args, *extra, f"hydra.run.dir={run}", cwd=cwd)
    assert out.returncode == 0, out.stderr
    return json.loads((cwd / run / "metrics.json").read_text())


def in_process(run_dir: Path, data: Path, *extra: str) -> dict:
    """The same training in this process (the cold baseline: no CLI behaviour under test)."""
    from helpers.datagen import train as train_here

    return train_here(run_dir, ["dataset=prepared", f"dataset.path={data}", *COMMON[:2], *extra])


def table(run_dir: Path) -> torch.Tensor:
    state = torch.load(run_dir / "checkpoints/best.pt", weights_only=True)["model_state"]
    return state["embedding.tables.0.weight"]


def test_three_days_each_starting_from_the_day_before(tmp_path):
    for day in (1, 2, 3):
        write_day(tmp_path / "raw" / f"day{day}", day)
    write_config(tmp_path / "conf")
    prepare(tmp_path, 1, cli=False)
    prepare(tmp_path, 2, "dataset.vocab_from=data/day1")
    prepare(tmp_path, 3, f"dataset.vocab_from={tmp_path}/data/day2", cli=False)

    day1 = train(tmp_path, 1, "run1", "trainer.epochs=4", "trainer.lr=0.01")
    quality = day1["metrics"]["val/mean_auc"]
    assert quality > 0.8
    before = tree(tmp_path / "run1")
    # day 2, warm: tables frozen (row-wise optimizer), so its rows stay exactly as carried over
    frozen = ["init.freeze=[embedding.*]", "trainer.embedding_optimizer=sparse_adam"]
    warm = train(tmp_path, 2, "run2", *AS_IT_STARTS, "init_from=run1", *frozen)
    cold = in_process(tmp_path / "cold2", tmp_path / "data/day2", *AS_IT_STARTS)  # no subprocess
    warm_auc, cold_auc = warm["metrics"]["val/mean_auc"], cold["metrics"]["val/mean_auc"]
    assert warm_auc > 0.75 and warm_auc > quality - 0.08, (warm_auc, quality)
    assert abs(cold_auc - 0.5) < 0.08, cold_auc
    assert tree(tmp_path / "run1") == before  # nothing written into the init run

    init = warm["init"]
    assert init["fields"]["user"] == {"carried": 61, "rows": 86}  # day 1's 60 users + OOV
    assert init["fields"]["item"] == {"carried": 41, "rows": 56}
    assert init["fields"]["category"] == {"carried": 17, "rows": 17}  # hashed: the same ids
    assert init["skipped"] == {} and init["new"] == [] and init["frozen"]
    # vocab_from kept day 1's ids: each of day 1's rows is at the same place in day 2's table
    old, new = table(tmp_path / "run1"), table(tmp_path / "run2")
    spans = [(0, 61, 0), (61, 41, 86), (102, 17, 142)]  # (day-1 start, rows, day-2 start)
    for start, rows, start2 in spans:
        assert torch.equal(old[start : start + rows], new[start2 : start2 + rows])
    assert not torch.equal(new[61:86], torch.zeros(25, new.shape[1]))  # new users: the init

    day3 = train(tmp_path, 3, "run3", "trainer.epochs=1", "trainer.lr=0.01", "init_from=run2")
    assert day3["init"]["fields"]["user"]["carried"] == 86  # every day-2 user, day 1's too
    assert day3["metrics"]["val/mean_auc"] > 0.75
