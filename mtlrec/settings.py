"""The typed settings of one training run, validated once, before anything is written.

`RunSettings.from_config(cfg)` turns the composed `mtlrec train` config into typed groups
(trainer, checkpoint, device, model, balance, seeds, resume) through `mtlrec.config_schema.build`,
or raises ONE MtlrecError line naming the key, the value and what is allowed:

    trainer.grad_clip_norm='abc': expected a number or null
    seed='abc': expected an integer
    trainer.monitor='val/foo': not a metric; expected val/<task>_<metric> with <metric> one of ...

`check(cfg)` is that plus the checks against the dataset's spec when it is at hand (the model's
tasks, trainer.monitor, memory, init_from). `SettingsCheck` (a Hydra callback, conf/train.yaml) runs
it at `on_run_start`, before Hydra creates the run dir, so a wrong value never leaves a half-made run
behind; `experiment.run` then takes those same settings (`settings_for`): each config value is
typed ONCE per run (the model's Config too), and everything downstream takes the typed object.
Tests and sweep jobs call `run` without the callback: it builds the settings itself, once.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, cast

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from mtlrec.config_schema import build, check_value
from mtlrec.data.streaming import StreamingConfig
from mtlrec.dataset_settings import DatasetSettings
from mtlrec.errors import MtlrecError
from mtlrec.training.config import TrainerConfig
from mtlrec.training.optim_step import check_step_settings
from mtlrec.training.torchrec_backend import check_settings as check_torchrec
from mtlrec.training.warm_start import InitSettings

if TYPE_CHECKING:
    from mtlrec.data.spec import DatasetSpec
    from mtlrec.models import ModelSettings
    from mtlrec.training.balance import BalanceSettings


@dataclass
class MetricsConfig:
    """`metrics:` in conf/train.yaml."""

    gauc_by: str | None = None  # a single-id field (e.g. user_id): also {split}/{task}_gauc
    ece_bins: int = 15  # equal-mass bins of {split}/{task}_ece and the reliability diagrams
    weighted: bool = False  # sample-weighted auc, logloss, pcoc, mse, mae (docs/training.md)

    def validate(self) -> None:
        if isinstance(self.ece_bins, bool) or not self.ece_bins >= 2:
            raise MtlrecError(f"metrics.ece_bins must be an integer >= 2, got {self.ece_bins!r}")


@dataclass
class CheckpointConfig:
    """`checkpoint:` in conf/train.yaml."""

    every_n_steps: int | None = None  # also write checkpoints/last.pt every N training steps
    # sparse_adam tables with at least this many rows: checkpoints/tables/ base + changed rows
    table_files_min_rows: int | None = 100_000
    # tables TorchRec shards over several ranks: auto = each rank's shards in a DCP folder
    # beside last.pt (docs/distributed.md); gathered = the full tables inside last.pt
    sharded: str = "auto"

    def validate(self) -> None:
        if self.sharded not in ("auto", "gathered"):
            raise MtlrecError(f"checkpoint.sharded must be auto or gathered, got {self.sharded!r}")
        rows = self.table_files_min_rows
        if rows is not None and (isinstance(rows, bool) or rows < 0):
            raise MtlrecError(
                f"checkpoint.table_files_min_rows must be an integer >= 0 or null, got {rows!r}"
            )
        if self.every_n_steps is not None and self.every_n_steps < 1:
            raise MtlrecError(
                f"checkpoint.every_n_steps must be an integer >= 1 or null, got {self.every_n_steps!r}"
            )


def check_checkpoint_layout(checkpoint: CheckpointConfig, trainer: TrainerConfig) -> None:
    """checkpoint.sharded=gathered changes only what TorchRec's tables sharded over several ranks
    write; anywhere else it would change nothing, silently: refused, as trainer.sharding is."""
    if checkpoint.sharded != "gathered":
        return
    if trainer.embedding_backend != "torchrec" or trainer.devices < 2:
        raise MtlrecError(
            "checkpoint.sharded=gathered applies only to trainer.embedding_backend=torchrec with "
            f"trainer.devices > 1 (tables sharded over several ranks), not to this run's "
            f"trainer.embedding_backend={trainer.embedding_backend} trainer.devices="
            f"{trainer.devices}, whose checkpoints hold whole tables anyway; remove it "
            "(resuming such a run: add checkpoint.sharded=auto)"
        )


@dataclass
class DeviceConfig:
    """conf/device/*.yaml"""

    type: Literal["auto", "cpu", "cuda"] = "auto"
    index: int = 0

    def validate(self) -> None:
        if self.index < 0:
            raise MtlrecError(f"device.index must be an integer >= 0, got {self.index}")


@dataclass(frozen=True)
class RunSettings:
    """Everything a run reads from its config, typed and checked."""

    config: dict[str, Any]  # the resolved plain config (saved in every checkpoint)
    trainer: TrainerConfig
    checkpoint: CheckpointConfig
    device: DeviceConfig
    seed: int
    data_order_seed: int
    resume: str | None
    model: ModelSettings  # the model's class and typed Config (mtlrec.models), built once
    balance: BalanceSettings  # the balancer's class and typed Config
    dataset: DatasetSettings = field(default_factory=DatasetSettings)
    streaming: StreamingConfig = field(default_factory=StreamingConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    init: InitSettings = field(default_factory=InitSettings)  # init_from, init.* (warm start)

    @property
    def model_name(self) -> str:
        return self.model.name

    @classmethod
    def from_config(cls, cfg: DictConfig | Mapping[str, Any]) -> RunSettings:
        config = plain_config(cfg)
        seed = check_value(int, config.get("seed", 0), "seed")
        order_seed = check_value(int, config.get("data_order_seed", seed), "data_order_seed")
        resume = check_value(str | None, config.get("resume"), "resume")
        dataset = dataset_settings(config.get("dataset"))
        if config.get("logger") is not None:
            from mtlrec.loggers import logger_config

            logger_config(config["logger"])  # a wrong logger.* key or type: one line, no run dir
        trainer = build(TrainerConfig, config.get("trainer"), "trainer")
        device = build(DeviceConfig, config.get("device"), "device")
        balance = balance_settings(config.get("balance"))
        check_step_settings(trainer, device.type, balance)  # fp16 on CPU, accumulation + DDP
        check_torchrec(trainer, device.type, balance)  # trainer.embedding_backend=torchrec
        checkpoint = build(CheckpointConfig, config.get("checkpoint"), "checkpoint")
        check_checkpoint_layout(checkpoint, trainer)
        return cls(
            config=config,
            trainer=trainer,
            checkpoint=checkpoint,
            device=device,
            seed=seed,
            data_order_seed=order_seed,
            resume=resume or None,
            model=model_settings(config.get("model") or {}),
            balance=balance,
            dataset=dataset,
            streaming=build(StreamingConfig, config.get("streaming"), "streaming"),
            metrics=build(MetricsConfig, config.get("metrics"), "metrics"),
            init=InitSettings.from_config(config),
        )


def plain_config(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """The resolved config as plain containers, without Hydra's own `hydra` node."""
    if not isinstance(cfg, DictConfig):
        # mypy keeps DictConfig in the union after this check (it is itself a Mapping)
        plain = cast(Mapping[str, Any], cfg)
        return {k: v for k, v in dict(plain).items() if k != "hydra"}
    out: dict[str, Any] = {}
    for key in cfg:
        if key == "hydra":
            continue
        value = cfg[key]  # a child node keeps its parent: interpolations resolve as in the run
        out[str(key)] = (
            OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
        )
    return out


def model_settings(model_cfg: Mapping[str, Any]) -> ModelSettings:
    """The model's class and typed Config: every key type-checked, never coerced
    (`batch_norm=abc` fails), then the Config's own checks (ranges, combinations of keys)."""
    from mtlrec.models import model_config

    return model_config(model_cfg)


def balance_settings(balance_cfg: Mapping[str, Any] | None) -> BalanceSettings:
    """The balance group: a known balancer and only its keys, typed by its Config (one line per
    error, before anything is written)."""
    from mtlrec.training.balance import balance_config

    return balance_config(balance_cfg)


def dataset_settings(dataset_cfg: Mapping[str, Any] | None) -> DatasetSettings:
    """The `dataset` group typed: its paths as Paths, its source's Config checked (one line per
    wrong key or type)."""
    dataset = dict(dataset_cfg or {})
    if "num_rows" in dataset:
        rows = check_value(int, dataset["num_rows"], "dataset.num_rows")
        if rows < 1:
            raise MtlrecError(f"dataset.num_rows must be an integer >= 1, got {rows}")
    from mtlrec.data.sources import validate_dataset_config

    return DatasetSettings.from_mapping(dataset, source=validate_dataset_config(dataset))


def spec_at_hand(settings: RunSettings) -> tuple[DatasetSpec | None, int | None]:
    """(the dataset's spec, rows still to be generated) when the spec is at hand without
    preparing anything: a prepared dir, or the embedded synthetic_ccp generator; checked against
    dataset.sample_weight (a column the data does not keep: one line)."""
    from mtlrec.data.ccp_generator import dataset_spec  # noqa: F811
    from mtlrec.data.spec import SPEC_FILE, DatasetSpec, check_configured_weight

    ds = settings.dataset
    path, generated = ds.path, ds.generated  # generated: the default dataset or a preset
    if path is not None and (path / SPEC_FILE).is_file():
        if not generated:
            return DatasetSpec.load(path, sample_weight=ds.sample_weight), None
        spec = DatasetSpec.load(path)  # the same line whether or not its rows exist yet
        check_configured_weight(spec, ds.sample_weight, f"dataset '{spec.name}' (generated)")
        return spec, None
    if generated:
        from mtlrec.data.sources.synthetic_ccp import SyntheticCcpConfig

        c = ds.source
        assert isinstance(c, SyntheticCcpConfig)
        spec = dataset_spec(c.num_rows, c.generator_seed, c.setting())
        check_configured_weight(spec, c.sample_weight, f"dataset '{spec.name}' (generated)")
        return spec, c.num_rows
    return None, None


def check_monitor_produced(settings: RunSettings, spec: DatasetSpec | None = None) -> None:
    """The model's tasks (e.g. ESM²'s funnel.action), metrics.gauc_by and trainer.monitor against
    the dataset, when its spec is at hand (spec_at_hand; found here when not given): before
    Hydra writes a run dir. Otherwise the trainer checks them once the data is there, still
    before epoch 1."""
    if spec is None:
        spec, _ = spec_at_hand(settings)
    if spec is None:
        return
    import torch

    from mtlrec.training.metrics import eval_targets
    from mtlrec.training.monitoring import produced_val_metrics, resolve_monitor

    selected = spec.select_tasks(settings.dataset.task_selection)
    cls, model_cfg = settings.model
    tasks = cls.loss_tasks(spec, selected, model_cfg)  # e.g. ESM² without the action label
    if settings.metrics.gauc_by is not None:
        from mtlrec.training.trainer import group_column

        group_column(spec, settings.metrics.gauc_by)  # a field the data does not have: one line
    if settings.trainer.monitor == "auto":
        return
    with torch.device("meta"):  # only its output names and types: no memory, no init cost
        outputs = cls(spec, tasks, model_cfg).output_types
    targets = eval_targets(tasks, outputs, spec, selected)
    gauc = settings.metrics.gauc_by is not None
    resolve_monitor(settings.trainer, tasks, produced_val_metrics(targets, tasks, gauc))


def check_memory(settings: RunSettings, spec: DatasetSpec | None, rows: int | None) -> None:
    """Parameters, optimizer state and generated rows against the device's free memory, before
    anything is allocated or written (mtlrec.training.memory)."""
    if spec is None:
        return
    import dataclasses

    import torch

    from mtlrec.training.memory import (
        check_footprint,
        model_footprint,
        row_bytes,
        tables_split_over_ranks,
    )
    from mtlrec.training.optimizers import free_memory

    # (a GPU that is asked for but missing is run_process.resolve_device's line, later)
    kind, cuda = settings.device.type, torch.cuda.is_available()
    on_gpu = cuda and kind in ("cuda", "auto") and settings.device.index < torch.cuda.device_count()
    device = torch.device("cuda", settings.device.index) if on_gpu else torch.device("cpu")
    trainer = settings.trainer
    split = tables_split_over_ranks(trainer, trainer.devices, device)  # the planner checks each
    try:
        selected = spec.select_tasks(settings.dataset.task_selection)
        need = model_footprint(settings.model, spec, selected, trainer.embedding_optimizer, split)
    except MtlrecError:  # tasks the model cannot train: the run says so, as it always did
        return
    if rows is not None:  # a generated dataset: every row is made in memory
        need = dataclasses.replace(need, data=rows * row_bytes(spec))
    check_footprint(need, free_memory(device), str(device), settings.model_name)


def check_init(settings: RunSettings, spec: DatasetSpec | None) -> None:
    """init_from's checkpoint (found, intact, of its run) and, when the spec is at hand, that
    something of it fits the model: before Hydra writes a run dir. A resume never reads it."""
    if settings.init.run_dir is None or settings.resume:
        return
    from mtlrec.data.spec import SPEC_FILE
    from mtlrec.training.warm_start import preflight

    path = settings.dataset.path
    data_dir = path if path is not None and (path / SPEC_FILE).is_file() else None
    selected = spec.select_tasks(settings.dataset.task_selection) if spec is not None else ()
    preflight(settings.init, settings.model, spec, data_dir, selected)


class SettingsCheck(Callback):
    """Hydra callback: validate the run's settings before Hydra writes anything (one line, exit 1).

    Hydra turns exceptions raised in callbacks into warnings, so the check prints its line and
    exits itself (as RunDirGuard does). HYDRA_FULL_ERROR=1 keeps the traceback.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            check(config)
        except MtlrecError as e:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            print(f"mtlrec train: error: {e}", file=sys.stderr)
            raise SystemExit(1) from None


# The settings `check` made last in this process, for `run` to take (the Hydra callback's).
_checked: list[RunSettings] = []


def check(cfg: DictConfig | Mapping[str, Any]) -> RunSettings:
    """A run's settings, typed and checked before anything is written: RunSettings.from_config,
    then, when the dataset's spec is at hand, the model's tasks, trainer.monitor, memory and
    init_from against it. `run` takes the result (settings_for) instead of typing it again."""
    settings = RunSettings.from_config(cfg)
    spec, rows = spec_at_hand(settings)
    check_monitor_produced(settings, spec)
    check_memory(settings, spec, rows)
    check_init(settings, spec)
    _checked[:] = [settings]
    return settings


def settings_for(cfg: DictConfig | Mapping[str, Any]) -> RunSettings:
    """The run's settings: those `check` made for this very config in this process (Hydra hands
    the task a copy of the config the callback saw), else typed now (a sweep job, a test)."""
    config = plain_config(cfg)
    checked = _checked.pop() if _checked else None
    if checked is not None and checked.config == config:
        return checked
    return RunSettings.from_config(config)
