"""`mtlrec train`: the Hydra entry point. Thin on purpose: compose, run, return the metric.

mtlrec train model=mmoe model.num_experts=4 trainer.epochs=5
mtlrec train -m model=mmoe model.num_experts=1,2,4,8 seed=1,2,3
"""

from __future__ import annotations

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from mtlrec.errors import MtlrecError


@hydra.main(version_base="1.3", config_path="pkg://mtlrec.conf", config_name="train")
def main(cfg: DictConfig) -> float:
    from mtlrec.experiment import run  # imported here so `--help`/`--cfg` stay fast
    from mtlrec.training.signals import TrainingInterrupted

    try:
        return run(cfg, HydraConfig.get().runtime.output_dir)
    except TrainingInterrupted as e:
        # Logged by run(); exit like a signal would (130 SIGINT, 143 SIGTERM), without a traceback.
        raise SystemExit(e.exit_code) from None
    except MtlrecError as e:
        # A single run: the error is already on stderr, once (mtlrec.commands.train.job_exit);
        # exit 1 without Hydra's header and footer around it. Sweeps go on to the next job.
        if HydraConfig.get().mode == RunMode.RUN:
            raise SystemExit(1) from e
        raise
