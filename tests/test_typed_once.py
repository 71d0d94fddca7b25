"""Each config value is typed once per run, at the edge (mtlrec.settings.check): a walk of
`model.num_experts` from the command line reaches the model through ONE build of its Config, and
every model built on the way (the meta-device checks, the real one) gets that same object; and
the config is composed twice, not three times."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import TINY_ROWS
from helpers.cli import env

WALK = """
import json, sys
import mtlrec.models as models
from mtlrec.cli import main

from hydra._internal.hydra import Hydra

typed, seen, composed = [], [], []
compose_config = Hydra.compose_config
def counting(self, *args, **kwargs):
    composed.append(kwargs.get("run_mode"))
    return compose_config(self, *args, **kwargs)
Hydra.compose_config = counting
original = models.model_config
def counted(raw):
    out = original(raw)
    typed.append(out[1])  # (class, Config)
    return out
models.model_config = counted
cls = models.MODELS["mmoe"]
init = cls.__init__
def recording(self, spec, tasks, cfg):
    seen.append(cfg)
    init(self, spec, tasks, cfg)
cls.__init__ = recording
try:
    main(sys.argv[1:])
except SystemExit as e:
    code = e.code
print(json.dumps({
    "exit": code,
    "builds": len(typed),
    "num_experts": [c.num_experts for c in typed],
    "models": len(seen),
    "same_object": all(c is typed[0] for c in seen),
    "compositions": len(composed),
}))
"""


def test_num_experts_reaches_the_model_through_one_build(tmp_path: Path):
    argv = ["train", "model=mmoe", "model.num_experts=3", f"dataset.num_rows={TINY_ROWS}",
            "trainer.epochs=1", "trainer.num_threads=1", "trainer.progress=false", "device=cpu",
            "trainer.monitor=val/ctr_auc", f"hydra.run.dir={tmp_path / 'run'}"]  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-c", WALK, *argv], cwd=tmp_path, env=env(), capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    walk = json.loads(out.stdout.strip().splitlines()[-1])
    assert walk["exit"] == 0
    # one Config built from the command line's values; the settings check's meta-device models
    # (trainer.monitor, memory) and the run's real model all take that very object
    assert walk["builds"] == 1 and walk["num_experts"] == [3]
    assert walk["models"] >= 2 and walk["same_object"] is True
    # the config is composed twice: the override check (one line per unknown key) and Hydra's
    # run; Hydra's own composition only to read hydra.mode takes the check's (commands/train.py)
    assert walk["compositions"] == 2
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["model"] == "mmoe"


def test_hydra_gets_the_checked_mode_only_when_its_overrides_compose_the_same_mode():
    from mtlrec.commands import train

    train.check_overrides(["model=mmoe", "hydra.run.dir=/tmp/x"])
    assert train._mode == [None]  # the packaged config leaves hydra.mode to Hydra's flags
    train.check_overrides(["model=mmoe", "hydra.mode=MULTIRUN"])  # left out of the check
    assert train._mode == []  # so Hydra composes hydra.mode itself
    train.check_overrides(["-m", "model=mmoe,esmm"])  # a sweep: no check, nothing handed over
    assert train._mode == []
