"""`mtlrec evaluate`: whole-split metrics of a run's checkpoint, computed as the run computed its own."""

from __future__ import annotations

from pathlib import Path

import torch

from mtlrec.data.spec import SPEC_FILE, DatasetSpec
from mtlrec.errors import MtlrecError
from mtlrec.inference.loading import load_run
from mtlrec.training.binding import check_dataset
from mtlrec.training.checkpoint import BEST, model_from_checkpoint


def evaluate(
    run_dir: str | Path, split: str | None = None, data: str | None = None, checkpoint: str = BEST
) -> dict[str, float]:
    """Whole-split metrics of a checkpoint, computed exactly as the run computed its own."""
    from mtlrec.data.loader import load_split
    from mtlrec.inference.progress import steps
    from mtlrec.training.evaluator import Evaluator, strip_gates
    from mtlrec.training.metrics import eval_targets

    with steps("evaluate", 3) as bar:
        with bar.step(f"loading {checkpoint}"):
            payload, _ = load_run(run_dir, checkpoint)
            model, spec, tasks = model_from_checkpoint(payload)
        config = payload["config"]
        name = split or "test"
        path = split_file(spec, payload, name, data)
        dataset = config.get("dataset") or {}
        selected = spec.select_tasks(dataset.get("tasks"))
        targets = eval_targets(tasks, model.output_types, spec, selected)
        violations = dataset.get("funnel_violations", "error")
        with bar.step(f"reading {path.name}"):
            tensors = load_split(path, spec, tuple(t.task for t in targets), violations)
        trainer_cfg = config.get("trainer") or {}
        evaluator = Evaluator(
            model,
            spec,
            tasks,
            targets,
            torch.device("cpu"),
            int(trainer_cfg.get("eval_batch_size", 8192)),
            # evaluation runs on the CPU: fp16 autocast is a CUDA setting
            str(trainer_cfg.get("precision", "fp32")).replace("fp16", "fp32"),
            ece_bins=int((config.get("metrics") or {}).get("ece_bins", 15)),
            weighted=bool((config.get("metrics") or {}).get("weighted", False)),
            sample_weights=bool(trainer_cfg.get("sample_weights", True)),
        )
        weights = task_weights(payload, tasks, model)
        with bar.step(f"scoring {len(tensors):,} rows of {name}"):
            return strip_gates(evaluator.evaluate(tensors, name, weights))


def task_weights(payload: dict, tasks: tuple, model: torch.nn.Module) -> torch.Tensor:
    """The task weights the run's `{split}/loss` used at this checkpoint: the balancer's, with
    its learned state (uncertainty, GradNorm, DWA) restored from the checkpoint."""
    from mtlrec.training.balance import make_balancer

    balancer = make_balancer(payload["config"].get("balance"), tasks, model)
    state = (payload.get("train_state") or {}).get("balancer") or {}
    if state:
        balancer.load_state_dict(state)
    with torch.no_grad():
        return balancer.current_weights().detach()


def split_file(spec: DatasetSpec, payload: dict, name: str, data: str | None) -> Path:
    """The parquet file to evaluate on: split `name` of the run's dataset, of the prepared dataset
    dir `data` (same features as the model's), or the parquet file `data` itself."""
    from mtlrec.data.sources import resolve_dataset_dir

    ckpt = Path(str(payload.get("path") or "checkpoint"))
    if data is None:
        data_dir = resolve_dataset_dir(payload["config"]["dataset"])
        check_dataset(payload, ckpt, data_dir)
        if name not in spec.splits:
            raise MtlrecError(f"--split {name}: the run's dataset has splits {sorted(spec.splits)}")
        return data_dir / spec.splits[name]
    path = Path(data).expanduser()
    if not path.is_dir():
        check_dataset(payload, ckpt, path.parent)  # a split file of a prepared dataset
        return path
    other = DatasetSpec.load(path)
    check_same_features(spec, other, path / SPEC_FILE)
    check_dataset(payload, ckpt, path)
    if name not in other.splits:
        raise MtlrecError(f"{path / SPEC_FILE}: no '{name}' split; it lists {sorted(other.splits)}")
    return path / other.splits[name]


def check_same_features(spec: DatasetSpec, other: DatasetSpec, where: Path) -> None:
    a = [(f.name, f.kind, f.vocab_size) for f in spec.features]
    b = [(f.name, f.kind, f.vocab_size) for f in other.features]
    if a != b:
        first = next((x, y) for x, y in zip(a + [None], b + [None], strict=False) if x != y)
        raise MtlrecError(
            f"{where}: its features differ from the ones the model was trained on "
            f"(first difference: {first})"
        )
