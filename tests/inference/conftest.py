"""The shared fixture of tests/inference: a run trained through the CLI on real-looking logs."""

from __future__ import annotations

import pytest
import yaml

from helpers.cli import mtlrec
from helpers.multidata import rich_config, write_rich_csv

SPLITS = ("train", "val", "test")


@pytest.fixture(scope="session")
def rich_run(tmp_path_factory):
    """(tmp dir, run dir, prepared dataset dir) of `mtlrec prepare` + `mtlrec train` (1 epoch)."""
    tmp = tmp_path_factory.mktemp("rich_predict")
    raw = tmp / "raw"
    for i, split in enumerate(SPLITS):
        df = write_rich_csv(raw / f"{split}.csv", n=600 if split == "train" else 300, seed=i)
        if split == "test":  # values the train split never had: they must map to the OOV id
            df.loc[3, "user"] = "u-never-seen"
            df.loc[5, "genres"] = "drama|unheard-of"
            df.loc[7, "history"] = "i999|i1"
            df.to_csv(raw / f"{split}.csv", index=False)
    cfg = rich_config(raw, {s: f"{s}.csv" for s in SPLITS})
    cfg["path"] = str(tmp / "prepared")
    (tmp / "conf" / "dataset").mkdir(parents=True)
    (tmp / "conf" / "dataset" / "rich.yaml").write_text(yaml.safe_dump(cfg))
    base = ["--config-dir", str(tmp / "conf"), "dataset=rich"]
    out = mtlrec("prepare", *base, cwd=tmp)
    assert out.returncode == 0, out.stderr
    run_dir = tmp / "run"
    out = mtlrec(
        "train",
        *base,
        "model=mmoe",
        "trainer.epochs=1",
        "trainer.batch_size=128",
        "trainer.num_threads=1",
        "device=cpu",
        f"hydra.run.dir={run_dir}",
        cwd=tmp,
    )
    assert out.returncode == 0, out.stderr
    return tmp, run_dir, tmp / "prepared"
