"""Bar charts of a metric per model (any categorical key) with error bars over seeds; legends
outside the axes; log y for losses. Real PNGs, read back; bar heights and error bars exact."""

from __future__ import annotations

import statistics

import pytest

from helpers.runs import assert_real_png, base_config, write_run
from mtlrec.report.compare import load_runs
from mtlrec.report.keys import differing_keys, short_names
from mtlrec.report.plot_bars import bar_figure
from mtlrec.report.plots import plot_learning_curves, seed_group_labels, write_plots

matplotlib = pytest.importorskip("matplotlib")

# (model, seed) -> test/mean_auc
AUC = {
    ("esmm", 1): 0.70, ("esmm", 2): 0.72, ("esmm", 3): 0.74,
    ("mmoe", 1): 0.75, ("mmoe", 2): 0.80, ("mmoe", 3): 0.78,
    ("ple", 1): 0.77, ("ple", 2): 0.77,
}  # fmt: skip


@pytest.fixture
def models(tmp_path):
    root = tmp_path / "sweep"
    for job, ((model, seed), auc) in enumerate(AUC.items()):
        cfg = base_config(model__name=model, seed=seed)
        history = [
            {"epoch": e, "train/loss": 0.5 / e**2 + 0.01 * seed, "val/mean_auc": auc - 0.1 / e}
            for e in (1, 2, 3)
        ]
        write_run(
            root / str(job),
            cfg,
            {"test/mean_auc": auc, "test/ctr_logloss": 0.4 - auc / 10},
            history=history,
            overrides=[f"model={model}", f"seed={seed}"],
        )
    return root


def _plt():
    from mtlrec.report.plots import require_matplotlib

    return require_matplotlib()


def test_bars_are_the_mean_over_seeds_with_the_sample_std(models):
    runs = load_runs([models])
    keys = differing_keys(runs)
    assert sorted(keys) == ["model.name", "seed"]
    fig = bar_figure(_plt(), runs, "model.name", keys, short_names(keys), "test/mean_auc")
    ax = fig.axes[0]
    from matplotlib.container import BarContainer

    (bars,) = [c for c in ax.containers if isinstance(c, BarContainer)]  # one series
    expected = {m: [v for (mm, _), v in AUC.items() if mm == m] for m in ("esmm", "mmoe", "ple")}
    assert [b.get_height() for b in bars] == [statistics.fmean(v) for v in expected.values()]
    segments = bars.errorbar.lines[2][0].get_segments()
    half_heights = [(seg[1][1] - seg[0][1]) / 2 for seg in segments]
    assert half_heights == pytest.approx([statistics.stdev(v) for v in expected.values()])
    assert half_heights[2] == 0.0  # ple: two equal seeds
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == ["esmm\n(n=3)", "mmoe\n(n=3)", "ple\n(n=2)"]
    fig.canvas.draw()
    legend = ax.get_legend().get_window_extent()
    assert legend.x0 >= ax.get_window_extent().x1  # outside the axes: hides no bar
    _plt().close(fig)


def test_write_plots_writes_the_bar_chart_and_a_log_loss_axis(models, tmp_path):
    written = write_plots(load_runs([models]), tmp_path / "p")
    assert [p.name for p in written] == ["learning_curves.png", "test_mean_auc_by_model.png"]
    for path in written:
        assert_real_png(path)

    class KeepFigure:  # plt, but close() keeps the figure for the test to look at
        def __getattr__(self, name):
            return getattr(_plt(), name)

        def close(self, fig):
            self.fig = fig

    plt = KeepFigure()
    runs = load_runs([models])
    keys = differing_keys(runs)
    labels = seed_group_labels(runs, keys, short_names(keys))
    assert sorted(set(labels.values())) == ["model=esmm", "model=mmoe", "model=ple"]
    plot_learning_curves(plt, runs, labels, tmp_path)
    ax_val, ax_loss = plt.fig.axes
    assert (ax_val.get_yscale(), ax_loss.get_yscale()) == ("linear", "log")
    plt.fig.canvas.draw()
    legend = ax_loss.get_legend()
    assert legend.get_window_extent().x0 >= ax_loss.get_window_extent().x1  # outside
    texts = [t.get_text() for t in legend.get_texts()]
    assert texts == ["model=esmm (n=3)", "model=mmoe (n=3)", "model=ple (n=2)"]
    # one colour per model: its mean line, and a ± std band per seed group
    mean_lines = {
        line.get_label(): line for line in ax_loss.get_lines() if line.get_label() in texts
    }
    assert len({tuple(line.get_color()) for line in mean_lines.values()}) == 3
    esmm = mean_lines["model=esmm (n=3)"]
    assert list(esmm.get_ydata()) == pytest.approx([0.5 / e**2 + 0.02 for e in (1, 2, 3)])
    assert len(ax_loss.collections) == 3 and len(ax_val.collections) == 3
    _plt().close(plt.fig)


def test_a_loss_metric_bar_chart_starts_at_zero(models):
    runs = load_runs([models])
    keys = differing_keys(runs)
    fig = bar_figure(_plt(), runs, "model.name", keys, short_names(keys), "test/ctr_logloss")
    assert fig.axes[0].get_ylim()[0] == 0.0
    _plt().close(fig)
