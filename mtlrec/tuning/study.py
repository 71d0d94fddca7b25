"""`mtlrec tune`: an Optuna study (ask/tell) whose trials are ordinary run dirs.

    STUDY_DIR/study.db        Optuna's sqlite storage: the study resumes from it after Ctrl-C
    STUDY_DIR/search.json     the search and overrides the study was started with
    STUDY_DIR/trials/N/       trial N's run dir (`mtlrec compare STUDY_DIR/trials` ranks them)
    STUDY_DIR/study.json      the outcome: best trial, its value and parameters, counts per state
    STUDY_DIR/plots/*.png     Optuna's optimization history and parameter importances

Trials run `jobs` at a time, each with its share of the cores (trainer.num_threads), like the
joblib launcher's sweep jobs. A trial still running when the study was interrupted is tried again
with the same parameters when the study resumes.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtlrec.errors import MtlrecError
from mtlrec.tuning.space import PrunerSpec, SearchConfig, suggest
from mtlrec.tuning.trial import TrialOutcome, TrialProcess, watch

COUNTED = ("COMPLETE", "PRUNED", "FAIL")
MAX_EARLY_FAILURES = 3  # then the study stops: a config error every trial would repeat


class StudyInterrupted(Exception):
    def __init__(self, exit_code: int):
        super().__init__(exit_code)
        self.exit_code = exit_code


@dataclass(frozen=True)
class StudyPaths:
    root: Path

    @property
    def db(self) -> Path:
        return self.root / "study.db"

    @property
    def trials(self) -> Path:
        return self.root / "trials"

    @property
    def search(self) -> Path:
        return self.root / "search.json"

    @property
    def summary(self) -> Path:
        return self.root / "study.json"

    @property
    def plots(self) -> Path:
        return self.root / "plots"


def claim(paths: StudyPaths) -> Any:
    """An exclusive lock on the study dir for this process's life (a second tune is refused)."""
    paths.root.mkdir(parents=True, exist_ok=True)
    handle = (paths.root / ".tune.lock").open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        pid = handle.read().strip() or "?"
        raise MtlrecError(
            f"{paths.root} is in use by another `mtlrec tune` (pid {pid}); wait for it or use "
            "another --study-dir"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def record_search(paths: StudyPaths, cfg: SearchConfig, extra: list[str]) -> None:
    """search.json on a new study; on a resumed one, the search must be the same."""
    search = dataclasses.asdict(cfg)
    wanted = {"search": search, "overrides": extra}
    if paths.search.is_file():
        saved = json.loads(paths.search.read_text())
        changed = sorted(
            k
            for k in set(saved["search"]) | set(search)
            if k not in ("trials", "jobs", "timeout_s") and saved["search"].get(k) != search.get(k)
        )
        if saved.get("overrides") != extra:
            changed.append("overrides")
        if changed:
            raise MtlrecError(
                f"{paths.search}: this study was started with another search ({', '.join(changed)} "
                "differ); resume it with the same search and overrides, or use a new --study-dir"
            )
        return
    tmp = paths.search.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(wanted, indent=2))
    tmp.replace(paths.search)


def make_pruner(spec: PrunerSpec) -> Any:
    import optuna

    if spec.name == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=spec.startup_trials, n_warmup_steps=spec.warmup_epochs
        )
    if spec.name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, spec.warmup_epochs))
    if spec.name == "threshold":
        return optuna.pruners.ThresholdPruner(
            lower=spec.lower, upper=spec.upper, n_warmup_steps=spec.warmup_epochs
        )
    return optuna.pruners.NopPruner()


def open_study(cfg: SearchConfig, paths: StudyPaths, storage: str | None = None) -> Any:
    """The study in `storage` (any Optuna RDB URL; default the study dir's sqlite file).

    A multi-objective study (several metrics) is not pruned: Optuna prunes single objectives only.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler_cls = (
        optuna.samplers.TPESampler if cfg.sampler.name == "tpe" else optuna.samplers.RandomSampler
    )
    multi = len(cfg.metrics) > 1
    try:
        study = optuna.create_study(
            storage=storage or f"sqlite:///{paths.db}",
            study_name=cfg.name,
            directions=cfg.directions,  # type: ignore[arg-type]  # checked: maximize|minimize
            sampler=sampler_cls(seed=cfg.sampler.seed),
            pruner=optuna.pruners.NopPruner() if multi else make_pruner(cfg.pruner),
            load_if_exists=True,
        )
    except ValueError as e:  # e.g. an existing study of the same name with other directions
        raise MtlrecError(f"--storage {storage or paths.db}: study {cfg.name!r}: {e}") from None
    except ImportError as e:  # the URL's database driver (e.g. psycopg2) is not installed
        raise MtlrecError(f"--storage {storage}: {e}; install the database's driver") from None
    import warnings

    with warnings.catch_warnings():  # "experimental" since Optuna 3.2: stable in practice
        warnings.simplefilter("ignore")
        study.set_metric_names(cfg.metrics)  # named in Optuna's dashboard, plots and dataframes
    return study


def retry_interrupted(study: Any) -> list[int]:
    """Trials left RUNNING by an interrupted study: marked failed, their parameters asked again."""
    from optuna.trial import TrialState

    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for t in stale:
        study._storage.set_trial_user_attr(t._trial_id, "interrupted", True)
        study.tell(t.number, state=TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
    return [t.number for t in stale]


def finished(study: Any) -> int:
    return sum(
        1
        for t in study.get_trials(deepcopy=False)
        if t.state.name in COUNTED and not t.user_attrs.get("interrupted")
    )


class StudyRunner:
    """Runs trials `jobs` at a time until `trials` are finished, the study is cancelled or a
    trial fails before training (a config error every trial would repeat)."""

    def __init__(self, study: Any, cfg: SearchConfig, paths: StudyPaths, overrides: list[str]):
        self.study, self.cfg, self.paths, self.overrides = study, cfg, paths, overrides
        self.lock = threading.Lock()
        self.cancelled = threading.Event()
        self.running = 0
        self.fatal: str | None = None
        self.failed_early = 0  # consecutive trials that failed before their first epoch
        self.threads = max(1, (os.cpu_count() or 1) // cfg.jobs)

    def trial_overrides(self, suggested: list[str]) -> list[str]:
        given = {o.split("=", 1)[0] for o in self.overrides}
        fixed = [o for o in self.cfg.overrides if o.split("=", 1)[0] not in given]
        mine = [f"trainer.monitor={self.cfg.metric}"]
        if "trainer.num_threads" not in given:
            mine.append(f"trainer.num_threads={self.threads}")  # this job's share of the cores
        return [*fixed, *self.overrides, *suggested, *mine]

    def next_trial(self) -> Any | None:
        with self.lock:
            if self.cancelled.is_set() or finished(self.study) + self.running >= self.cfg.trials:
                return None
            self.running += 1
            return self.study.ask()

    def run_one(self, trial: Any) -> TrialOutcome:
        from optuna.trial import TrialState

        run_dir = self.paths.trials / str(trial.number)
        suggested = suggest(trial, self.cfg.params)
        overrides = self.trial_overrides(suggested)
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("suggested", suggested)
        trial.set_user_attr("overrides", overrides)
        child = TrialProcess(overrides, run_dir, self.paths.root / "logs" / f"{trial.number}.log")
        result = watch(trial, child, self.cfg.metrics, self.cancelled)
        trial.set_user_attr("epochs", result.epochs)  # no intermediate values when multi-objective
        with self.lock:
            self.running -= 1
            if result.state == "complete":
                self.study.tell(trial, result.values if len(self.cfg.metrics) > 1 else result.value)
            elif result.state == "pruned":
                self.study.tell(trial, state=TrialState.PRUNED)
            else:
                trial.set_user_attr("error", result.error)
                if result.state == "interrupted":  # asked again when the study resumes
                    trial.set_user_attr("interrupted", True)
                    self.study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
                self.study.tell(trial, state=TrialState.FAIL)
            self.failed_early = self.failed_early + 1 if result.before_training else 0
            if self.failed_early >= MAX_EARLY_FAILURES and self.fatal is None:
                self.fatal = (
                    f"{self.failed_early} trials in a row failed before their first epoch; "
                    f"trial {trial.number}: {result.error}"
                )
                self.cancelled.set()
        return result

    def worker(self) -> None:
        while (trial := self.next_trial()) is not None:
            self.run_one(trial)

    def run(self) -> None:
        pool = ThreadPoolExecutor(self.cfg.jobs, thread_name_prefix="trial")
        futures = [pool.submit(self.worker) for _ in range(self.cfg.jobs)]
        try:
            for f in futures:
                while not f.done():
                    try:
                        f.result(timeout=0.5)
                    except FutureTimeout:
                        continue
        except BaseException:
            self.cancelled.set()  # children get SIGTERM, write their checkpoint and end
            pool.shutdown(wait=True)
            raise
        pool.shutdown(wait=True)
        for f in futures:
            f.result()


def raise_on_sigterm() -> Any:
    def handler(signum: int, frame: Any) -> None:
        raise StudyInterrupted(128 + signum)

    return signal.signal(signal.SIGTERM, handler)
