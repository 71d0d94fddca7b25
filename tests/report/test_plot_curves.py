"""task_curves.png: one panel per task of the monitored metric kind, seeds grouped per model."""

from __future__ import annotations

import statistics

import pytest

from helpers.runs import assert_real_png, base_config, write_run
from mtlrec.report.compare import load_runs
from mtlrec.report.keys import differing_keys, short_names
from mtlrec.report.plot_curves import plot_task_curves, seed_group_labels, task_keys
from mtlrec.report.plots import require_matplotlib, write_plots

pytest.importorskip("matplotlib")


def _history(model: str, seed: int) -> list[dict]:
    shift = (0.05 if model == "mmoe" else 0.0) + seed / 100
    return [
        {
            "epoch": e,
            "train/loss": 0.6 / e,
            "val/mean_auc": 0.6 + shift + e / 50,
            "val/ctr_auc": 0.62 + shift + e / 50,
            "val/cvr_auc": 0.58 + shift + e / 50,
            "val/cvr_auc_entire": 0.7 + shift,
            "val/ctr_logloss": 0.4 - e / 100,  # another metric kind: no panel
        }
        for e in (1, 2, 3)
    ]


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "sweep"
    for job, (model, seed) in enumerate([("esmm", 1), ("esmm", 2), ("mmoe", 1), ("mmoe", 2)]):
        write_run(
            root / str(job),
            base_config(model__name=model, seed=seed),
            {"test/mean_auc": 0.7},
            history=_history(model, seed),
            overrides=[f"model={model}", f"seed={seed}"],
        )
    return load_runs([root])


def test_task_keys_are_the_monitored_kind_per_task(runs):
    assert task_keys(runs, "val/mean_auc") == ["val/ctr_auc", "val/cvr_auc", "val/cvr_auc_entire"]
    assert task_keys(runs, "val/mean_logloss") == ["val/ctr_logloss"]


def test_one_panel_per_task_with_the_seed_mean_per_model(runs, tmp_path):
    written = write_plots(runs, tmp_path / "p")
    assert [p.name for p in written][:2] == ["learning_curves.png", "task_curves.png"]
    assert_real_png(tmp_path / "p" / "task_curves.png")

    class KeepFigure:
        def __getattr__(self, name):
            return getattr(require_matplotlib(), name)

        def close(self, fig):
            self.fig = fig

    plt = KeepFigure()
    keys = differing_keys(runs)
    plot_task_curves(plt, runs, seed_group_labels(runs, keys, short_names(keys)), tmp_path)
    panels = [ax for ax in plt.fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == [
        "val/ctr_auc",
        "val/cvr_auc",
        "val/cvr_auc_entire",
    ]
    for ax in panels:  # epochs are whole numbers: no 1.5 on the axis
        assert all(float(t).is_integer() for t in ax.get_xticks())
    ctr = panels[0]
    mean = next(line for line in ctr.get_lines() if line.get_label() == "model=esmm (n=2)")
    expected = [statistics.fmean([0.62 + s / 100 + e / 50 for s in (1, 2)]) for e in (1, 2, 3)]
    assert list(mean.get_ydata()) == pytest.approx(expected)
    require_matplotlib().close(plt.fig)
