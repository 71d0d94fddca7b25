"""One training run, from a composed config to a complete run directory.

`run(cfg, run_dir)` is what `mtlrec train` calls inside its Hydra job; tests call it directly with
a config from `compose()`. It returns the best value of the monitored validation metric (what
Hydra sweepers optimize).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from pathlib import Path
from typing import Any

import rich
import torch
from omegaconf import DictConfig
from rich.console import Console

from mtlrec.data.sources import source_for
from mtlrec.data.spec import DatasetSpec, TaskSpec
from mtlrec.errors import MtlrecError
from mtlrec.loggers import build_logger, log_step_scalars
from mtlrec.models import build_model, seeded_init
from mtlrec.models.base import MultiTaskModel
from mtlrec.models.torchrec_embedding import convert_model
from mtlrec.run_process import (
    check_embedding_memory,
    environment,
    in_sweep,
    print_job_line,
    print_metrics_table,
    resolve_device,
    seed_everything,
    set_deterministic,
    warn_if_still_improving,
)
from mtlrec.runs.resume import mark_resume_accepted
from mtlrec.runs.run_dir import ENV_FILE, RunDir
from mtlrec.settings import RunSettings, settings_for
from mtlrec.sweeps.callback import job_thread_share
from mtlrec.training import binding, distributed, torchrec_backend, torchrec_checkpoint, warm_start
from mtlrec.training.batches import load_data, place_splits
from mtlrec.training.best_files import BestFiles
from mtlrec.training.calibration import RELIABILITY_FILE
from mtlrec.training.checkpoint import (
    BEST,
    LAST,
    PREVIOUS,
    RESUME_MAY_CHANGE,
    TrainState,
    check_resume_config,
    load_resumable,
    make_payload,
    restore_training,
    resume_state,
    save_last,
)
from mtlrec.training.memory import check_model_memory, tables_split_over_ranks
from mtlrec.training.metrics import EvalTarget, eval_targets
from mtlrec.training.per_task import checkpoint_name, test_per_task
from mtlrec.training.signals import StopRequest, TrainingInterrupted, shielded
from mtlrec.training.trainer import FitResult, Trainer, TrainerConfig, strip_gates

__all__ = [
    "RESUME_MAY_CHANGE",
    "resolve_device",
    "set_deterministic",
    "RunRecorder",
    "TrainerConfig",
    "check_resume_config",
    "load_data",
    "place_splits",
    "run",
]

log = logging.getLogger("mtlrec")


def run(cfg: DictConfig, run_dir_path: str | Path) -> float:
    """Train, validate, test; write the run directory. Returns the best monitored value.

    With `cfg.resume` set, continue the run in `run_dir_path` from its last complete checkpoint.
    With trainer.devices=N > 1, N ranks run this function (distributed.spawn) and this process
    records how they ended. Settings are validated before anything is written.
    """
    settings = settings_for(cfg)  # the Hydra callback's check, when it ran: typed once
    rank = distributed.process_rank()
    run_dir = RunDir(run_dir_path, read_only=not rank.is_main)  # rank 0 alone writes
    started = time.time()
    _record_start(run_dir, settings)
    try:
        if distributed.should_spawn(cfg):  # trainer.devices=N: N ranks run this function
            return distributed.spawn(run, cfg, run_dir_path)
        with StopRequest() as stop:
            return _run(settings, run_dir, started, stop)
    except (TrainingInterrupted, KeyboardInterrupt) as e:
        if isinstance(e, KeyboardInterrupt):  # a second signal: stopped at once, no new checkpoint
            e = TrainingInterrupted("stopped at once by a second signal", 2)
        with shielded():
            run_dir.update_metrics(
                status="interrupted", error=str(e), wall_seconds=time.time() - started
            )
            log.warning("%s; continue with: mtlrec train resume=%s", e, run_dir.path)
        raise e from None
    except distributed.RankFailed as e:  # spawn: a rank failed; `text` names the rank and cause
        run_dir.update_metrics(status="failed", error=e.text, wall_seconds=time.time() - started)
        raise
    except MtlrecError as e:
        run_dir.update_metrics(status="failed", error=str(e), wall_seconds=time.time() - started)
        log.error("%s", e)
        raise
    except Exception as e:
        run_dir.update_metrics(
            status="failed", error=f"{type(e).__name__}: {e}", wall_seconds=time.time() - started
        )
        raise


def _record_start(run_dir: RunDir, settings: RunSettings) -> None:
    if settings.resume:
        if Path(settings.resume).expanduser().resolve() != run_dir.path.resolve():
            raise MtlrecError(
                f"resume={settings.resume} but the run dir is {run_dir.path}; use `mtlrec train "
                f"resume={settings.resume}` (it sets hydra.run.dir) or set "
                f"hydra.run.dir={settings.resume}"
            )
        now = dt.datetime.now().isoformat(timespec="seconds")
        run_dir.update_metrics(status="running", resumed_at=now)
        return
    run_dir.update_metrics(
        status="running",
        model=settings.model_name,
        config_hash=binding.config_hash(settings.config),
        seed=settings.seed,
        data_order_seed=settings.data_order_seed,
        started_at=dt.datetime.now().isoformat(timespec="seconds"),
        error=None,
    )


def _run(settings: RunSettings, run_dir: RunDir, started: float, stop: StopRequest) -> float:
    """The recipe: process setup -> build -> restore -> fit -> finish."""
    checkpoint = read_resume(settings, run_dir)
    if checkpoint is not None:
        settings = continue_settings(settings, checkpoint[0])
    device = setup_process(settings, run_dir)
    built = build(settings, run_dir, device, stop)
    resume = restore(built, checkpoint, run_dir, settings.checkpoint.sharded)
    recorder = RunRecorder(run_dir, built, settings, resume)
    recorder.skipped_last = checkpoint is not None and checkpoint[1].name == PREVIOUS
    recorder.tables.adopt(checkpoint[0] if checkpoint else {}, settings.init.run_dir is None)
    recorder.best_files.release(resume)  # the best weights the table files hold: not in RAM
    del checkpoint  # loaded into the model and the optimizer: the payload's copies go
    try:
        # other ranks: no hooks, or their part of the checkpoints of sharded tables
        peer = torchrec_checkpoint.fit_hooks(recorder.tables, built.model, built.trainer.optimizer)
        result = built.trainer.fit(built.splits, recorder if built.is_main else peer, resume)
    except BaseException as e:
        interrupted = isinstance(e, (KeyboardInterrupt, TrainingInterrupted))
        recorder.logger.finish("interrupted" if interrupted else "failed")
        raise
    return finish(built, settings, recorder, result, started)


def read_resume(settings: RunSettings, run_dir: RunDir) -> tuple[dict, Path] | None:
    """With resume=RUN_DIR: its newest complete checkpoint, checked against this config."""
    if not settings.resume:
        return None
    payload, path = load_resumable(run_dir.checkpoints, gather=False)  # restore: shards or all
    summary = run_dir.read_summary()
    binding.check_run(payload, path, run_dir.path, summary.model, summary.config_hash)
    if summary.config_hash is None:  # a run from before the binding: bound from now on
        run_dir.update_metrics(config_hash=binding.run_hash(payload, settings.config))
    state = resume_state(payload, path)
    check_resume_config(payload["config"], settings.config, path)
    binding.check_dataset(payload, path, settings.dataset.path)  # (restore: again)
    step = "" if state.step is None else f" step {state.step}"
    log.info("resuming from %s (epoch %s%s)", path, state.epoch, step)
    return payload, path


def continue_settings(settings: RunSettings, payload: dict) -> RunSettings:
    """A run started before trainer.tail_batch existed trained its short last batch on its own:
    it continues that way, so the resumed run equals the uninterrupted one."""
    if "tail_batch" in payload["config"].get("trainer", {}):
        return settings
    trainer = dataclasses.replace(settings.trainer, tail_batch="keep")
    return dataclasses.replace(settings, trainer=trainer)


def setup_process(settings: RunSettings, run_dir: RunDir) -> torch.device:
    """Threads, device, distributed setup, determinism and seeds of this process."""
    trainer_cfg = settings.trainer
    if trainer_cfg.num_threads is not None:
        torch.set_num_threads(trainer_cfg.num_threads)
    elif (share := job_thread_share()) is not None:
        torch.set_num_threads(share)  # a parallel sweep job: its share of the cores (sweeps/)
    device = resolve_device(settings.device)
    device = distributed.setup(
        device, settings.config, trainer_cfg.num_threads is not None, run_dir.path
    )
    set_deterministic(bool(trainer_cfg.deterministic))
    seed_everything(settings.seed)
    return device


@dataclasses.dataclass
class Built:
    """What `build` makes: the data, the model and the trainer of a run."""

    data_dir: Path
    spec: DatasetSpec
    model: MultiTaskModel
    loss_tasks: tuple[TaskSpec, ...]
    targets: list[EvalTarget]
    splits: dict[str, Any]
    trainer: Trainer
    device: torch.device
    parallel: dict[str, Any]
    console: Console

    @property
    def is_main(self) -> bool:
        return distributed.current().is_main

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def build(settings: RunSettings, run_dir: RunDir, device: torch.device, stop: StopRequest) -> Built:
    """Dataset spec, model, its tasks and evaluation targets, the splits, the trainer."""
    trainer_cfg, dataset = settings.trainer, settings.dataset
    with distributed.main_first():  # rank 0 generates a missing dataset, then the others read it
        data_dir = source_for(dataset.raw).resolve(dataset.source)  # its Config, typed once
    spec = DatasetSpec.load(data_dir, sample_weight=dataset.sample_weight)
    selected = spec.select_tasks(dataset.task_selection)
    ranks = distributed.current().world_size
    check_model_memory(settings.model, spec, selected, trainer_cfg, device, ranks)
    resuming, name = bool(settings.resume), settings.model_name  # init_from: before the optimizer
    # torchrec: big tables are meta until each rank draws its shards (not under init_from,
    # which copies whole tables into the model first)
    in_shards = torchrec_backend.draws_in_shards(trainer_cfg, settings.init.run_dir, resuming)
    with seeded_init.loaded_next(resuming), seeded_init.drawn_in_shards(in_shards):
        model, loss_tasks = build_model(settings.model, spec, selected)  # resumed: not drawn
    init = warm_start.start(settings.init, resuming, model, spec, data_dir, name)
    split = ranks if in_shards and tables_split_over_ranks(trainer_cfg, ranks, device) else 1
    log.info("%s", check_embedding_memory(model, trainer_cfg.embedding_optimizer, device, split))
    if in_shards:
        convert_model(model)  # the (meta) tables leave the model's parameters before .to
    model.to(device)
    torchrec_backend.shard_model(model, trainer_cfg, device, run_dir.write_json, settings.resume)
    targets = eval_targets(loss_tasks, model.output_types, spec, selected)
    console = rich.get_console()  # the console the log handler writes to: no shared lines
    trainer = Trainer(  # it checks trainer.monitor against this run's metrics: before the data
        model,
        spec,
        loss_tasks,
        targets,
        trainer_cfg,
        device,
        settings.data_order_seed,
        console,
        balance=settings.balance,
        stop=stop,
        checkpoint_every=settings.checkpoint.every_n_steps,
        gauc_by=settings.metrics.gauc_by,
        ece_bins=settings.metrics.ece_bins,
        weighted_metrics=settings.metrics.weighted,
    )
    warm_start.finish_start(init, trainer.optimizer, run_dir.update_metrics)
    tasks, source = tuple(t.task for t in targets), dataset.source  # typed once
    splits = load_data(
        source, data_dir, spec, tasks, device, trainer_cfg.data_on_device, settings.streaming
    )
    splits = distributed.shard_streaming(splits, trainer_cfg.batch_size)  # ranks: own row groups
    parallel = distributed.current().describe(trainer_cfg.batch_size)
    parallel["effective_batch_size"] *= trainer_cfg.accumulate_batches  # rows per optimizer step
    run_dir.write_json(ENV_FILE, {**environment(device), "distributed": parallel})
    built = Built(
        data_dir, spec, model, loss_tasks, targets, splits, trainer, device, parallel, console
    )
    log_run(built, settings, run_dir)
    return built


def log_run(built: Built, settings: RunSettings, run_dir: RunDir) -> None:
    ranks = distributed.current()
    if ranks.active:
        log.info(
            "data parallel: %d rank(s) (%s, %s), batch %d per rank, effective batch %d",
            ranks.world_size,
            ranks.launcher,
            ranks.backend,
            settings.trainer.batch_size,
            built.parallel["effective_batch_size"],
        )
    log.info("run dir: %s", run_dir.path)
    log.info(
        "model %s (%s parameters) on %s, %d torch thread(s); dataset %s at %s",
        settings.model_name,
        f"{built.num_parameters:,}",
        built.device,
        torch.get_num_threads(),
        built.spec.name,
        built.data_dir,
    )
    log.info(
        "rows: %s; tasks: %s",
        ", ".join(f"{k} {len(v):,}" for k, v in built.splits.items()),
        ", ".join(
            f"{t.name}({t.label}{', where ' + t.where if t.where else ''}, w={t.weight:g})"
            for t in built.loss_tasks
        ),
    )
    left_out = tasks_left_out(built, settings.dataset.task_selection)
    if left_out:
        log.warning(
            "model %s trains %s and leaves out the dataset's task(s) %s: neither trained nor "
            "scored (a model that trains dataset.tasks, e.g. model=mmoe, trains them all)",
            settings.model_name,
            ", ".join(t.name for t in built.loss_tasks),
            ", ".join(f"{t.name} (label {t.label})" for t in left_out),
        )


def tasks_left_out(built: Built, chosen: Any) -> list[TaskSpec]:
    """The dataset's selected tasks the model neither trains nor scores (a funnel model on data
    with a third target), so that a run never drops a task without a word."""
    scored = {t.task.name for t in built.targets} | {t.name for t in built.loss_tasks}
    labels = {t.label for t in built.loss_tasks}
    return [
        t for t in built.spec.select_tasks(chosen) if t.name not in scored and t.label not in labels
    ]


def restore(
    built: Built, checkpoint: tuple[dict, Path] | None, run_dir: RunDir, layout: str = "auto"
) -> TrainState | None:
    """Load a resumed run's weights and optimizer state; its TrainState (None: a new run)."""
    if checkpoint is None:
        return None
    payload, path = checkpoint
    trainer = built.trainer
    with torchrec_checkpoint.restoring(payload, path, built.model, trainer.optimizer, layout) as p:
        name = payload["config"]["model"]["name"]
        state = restore_training(p, path, built.model, trainer.optimizer, name, built.spec)
    distributed.check_resume_world(state.to_dict(), path)
    binding.check_dataset(payload, path, built.data_dir)
    if built.is_main:
        mark_resume_accepted(run_dir.path)
    return state


class RunRecorder:
    """Writes what fit reports into the run dir: history.csv, checkpoints, the metric logger."""

    def __init__(
        self, run_dir: RunDir, built: Built, settings: RunSettings, resume: TrainState | None
    ):
        self.run_dir, self.built, self.settings = run_dir, built, settings
        self.history: list[dict[str, Any]] = list(resume.history) if resume is not None else []
        logger_cfg = settings.config.get("logger") if built.is_main else None
        self.logger = build_logger(logger_cfg, run_dir.path, settings.config, resume)
        digest = run_dir.read_summary().config_hash or binding.config_hash(settings.config)
        self.binding = binding.checkpoint_fields(digest, built.data_dir)  # the start's config
        model, optimizer, cfg = built.model, built.trainer.optimizer, settings.checkpoint
        self.tables = torchrec_checkpoint.checkpoint_files(  # TableFiles, or DCP folders
            run_dir.checkpoints, model, optimizer, cfg, built.is_main, self._write
        )
        self.best_files = BestFiles(self.tables, model, built.trainer.saved_model())
        self.skipped_last = False  # resumed from last.prev.pt: last.pt is damaged (save_last)

    def payload(self, state: TrainState, model: MultiTaskModel | None = None) -> dict:
        built, settings = self.built, self.settings
        with torchrec_checkpoint.payload_context(self.tables, built.model, built.trainer.optimizer):
            return make_payload(
                model or built.model,
                built.trainer.optimizer,
                settings.config,
                built.spec,
                built.loss_tasks,
                state.epoch,
                train_state=state,
                tables=self.tables if model is None else None,  # EMA's best.pt: written whole
                monitor=built.trainer.monitor,
                **{"seed": settings.seed, "data_order_seed": settings.data_order_seed},
                **self.binding,
            )

    def _write(self, payload: dict, path: Path) -> None:  # checkpoints/NAME or tables/NAME
        self.run_dir.save_checkpoint(str(path.relative_to(self.run_dir.checkpoints)), payload)

    def _save_last(self, payload: dict) -> Path:
        rotate, self.skipped_last = not self.skipped_last, False
        return save_last(self.run_dir.checkpoints, payload, self._write, rotate)

    def on_checkpoint(self, state: TrainState) -> str:
        path = self._save_last(self.payload(state))
        self.tables.collect()
        return str(path.relative_to(self.run_dir.path))

    def on_epoch_end(self, row: dict[str, Any], is_best: bool, state: TrainState) -> None:
        self.history[:] = state.history
        self.run_dir.write_history(self.history)
        self.logger.log_epoch(row)
        payload = self.payload(state)
        self._save_last(payload)
        saved = self.built.trainer.saved_model()  # trainer.ema_decay: the averaged weights
        averaged, kept_best = saved is not self.built.model, is_best or row["epoch"] == 1
        tasks = self._improved_tasks()
        best = self.payload(state, saved) if averaged and (kept_best or tasks) else payload
        if kept_best and averaged:
            self.run_dir.save_checkpoint(BEST, best)
        elif kept_best:  # a second name of last.pt's file, not a copy
            self.run_dir.link_checkpoint(BEST, payload)
            self.tables.mark_best()
        # best_<task>.pt: second names of the file holding the weights the task was validated
        # with (last.pt's; with trainer.ema_decay the averaged weights', as best.pt)
        source = BEST if averaged and kept_best else LAST
        for task in tasks:
            if averaged and not kept_best and source == LAST:  # written once, then linked
                source = checkpoint_name(task)
                self.run_dir.save_checkpoint(source, best)
            elif checkpoint_name(task) != source:
                self.run_dir.link_checkpoint(checkpoint_name(task), best, source)
            self.best_files.mark_task(task)  # its files hold the task's best tables
        self.tables.collect()  # table files no checkpoint names any more

    def _improved_tasks(self) -> list[str]:
        """The tasks whose own best epoch this is (trainer.keep_best_per_task)."""
        per_task = self.built.trainer.per_task
        if not self.settings.trainer.keep_best_per_task or per_task is None:
            return []
        return list(per_task.improved)

    def on_optimizer_step(self, step: int, lr: float) -> None:
        log_step_scalars(self.logger, self.built.trainer, step, lr)


def finish(
    built: Built, settings: RunSettings, recorder: RunRecorder, result: FitResult, started: float
) -> float:
    """Test the best weights; metrics.json, the metric logger's end, the table on the console."""
    trainer = built.trainer
    best_row = next(r for r in result.history if r["epoch"] == result.best_epoch)
    val_metrics = {k: v for k, v in strip_gates(best_row).items() if k.startswith("val/")}
    t_eval = time.perf_counter()
    test_metrics = strip_gates(trainer.evaluate(built.splits["test"], "test"))
    eval_seconds = time.perf_counter() - t_eval
    if built.is_main:  # the test split's reliability bins: compare --plot's reliability diagrams
        bins = trainer.evaluator.reliability.get("test", {})
        recorder.run_dir.write_json(RELIABILITY_FILE, {"split": "test", "targets": bins})
    per_task = None
    if settings.trainer.keep_best_per_task and trainer.per_task is not None:
        checkpoints, files = recorder.run_dir.checkpoints, trainer.best_files
        per_task = test_per_task(trainer, built.splits["test"], result.history, checkpoints, files)
    final = recorder.run_dir.update_metrics(
        status="completed",
        error=None,
        model=settings.model_name,
        dataset=built.spec.name,
        monitor=trainer.monitor,
        monitor_mode=trainer.mode,
        best_epoch=result.best_epoch,
        best_value=result.best_value,
        epochs_run=len(result.history),
        stopped_early=result.stopped_early,
        metrics={**val_metrics, **test_metrics},
        undefined_metrics=trainer.evaluator.undefined or None,
        wall_seconds=time.time() - started,
        train_samples_per_s=result.train_samples_per_s,
        eval_samples_per_s=len(built.splits["test"]) / eval_seconds if eval_seconds > 0 else None,
        num_parameters=built.num_parameters,
        device=str(built.device),
        num_threads=torch.get_num_threads(),
        world_size=distributed.current().world_size,
        effective_batch_size=built.parallel["effective_batch_size"],
        per_task_best=per_task,
    )
    recorder.logger.finish("completed", final)
    if built.is_main:
        best = (result.best_epoch, len(result.history))
        if in_sweep():  # one line a job; the sweep's table of all jobs comes at its end
            print_job_line(built.console, best, trainer.monitor, val_metrics, test_metrics)
        else:
            print_metrics_table(built.console, val_metrics, test_metrics, best)
    # the table says it on the console; the test metrics also go to train.log, in one line
    log.info(
        "test: %s",
        "  ".join(f"{k}={v:.5f}" for k, v in sorted(test_metrics.items())),
        extra={"console": False},
    )
    warn_if_still_improving(result, settings.trainer, trainer.monitor)
    return float(result.best_value)
