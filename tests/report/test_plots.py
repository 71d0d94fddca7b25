"""`compare --plot`: real PNGs from run dirs, checked as images (size, not blank, colours)."""

from __future__ import annotations

import sys

import pytest

from helpers.runs import assert_real_png, base_config, write_run
from mtlrec.commands.compare import main
from mtlrec.errors import MtlrecError
from mtlrec.report.compare import load_runs
from mtlrec.report.plots import gate_matrix, write_plots


def history(seed: int, experts: int, epochs: int = 4) -> list[dict]:
    rows = []
    for epoch in range(1, epochs + 1):
        row = {
            "epoch": epoch,
            "train/loss": 1.0 / epoch + 0.01 * seed,
            "val/mean_auc": 0.6 + 0.02 * epoch,
        }
        for task in ("ctr", "cvr"):
            # ctr prefers expert 0, cvr the last expert: the heatmap must show it
            weights = [1.0] * experts
            weights[0 if task == "ctr" else -1] = 3.0
            for e, w in enumerate(weights):
                row[f"gate/{task}/expert_{e}"] = w / sum(weights)
        rows.append(row)
    return rows


@pytest.fixture
def sweep(tmp_path):
    root = tmp_path / "sweep"
    job = 0
    for experts in (1, 2, 4):
        for seed in (1, 2):
            auc = 0.7 + 0.01 * experts + 0.005 * seed
            write_run(
                root / str(job),
                base_config(model__num_experts=experts, seed=seed),
                {"test/mean_auc": auc, "test/ctr_auc": auc},
                history=history(seed, experts),
                overrides=[f"model.num_experts={experts}", f"seed={seed}"],
            )
            job += 1
    return root


def test_write_plots_learning_curves_metric_vs_param_and_gates(sweep, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "plots"
    written = write_plots(load_runs([sweep]), out)
    assert [p.name for p in written] == [
        "learning_curves.png",
        "test_mean_auc_vs_num_experts.png",
        "moe_gates.png",
    ]
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert path.stat().st_size > 10_000
        assert_real_png(path)


def test_gate_matrix_reads_the_best_epoch_row():
    rows = history(seed=1, experts=4, epochs=3)
    rows[1]["gate/ctr/expert_0"] = 0.99  # epoch 2 only
    tasks, experts, weights = gate_matrix(rows, epoch=2)
    assert tasks == ["ctr", "cvr"] and experts == [0, 1, 2, 3]
    assert weights[0][0] == 0.99
    assert weights[1] == [1 / 6, 1 / 6, 1 / 6, 3 / 6]
    assert gate_matrix(rows, epoch=None)[2][0][0] == 0.5  # last row


def test_compare_plot_flag(sweep, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    assert main([str(sweep), "--plot", str(tmp_path / "p"), "--format", "csv"]) == 0
    err = capsys.readouterr().err
    assert f"wrote {tmp_path / 'p' / 'moe_gates.png'}" in err
    assert len(list((tmp_path / "p").glob("*.png"))) == 3


def test_without_matplotlib_one_line_names_the_extra(sweep, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(MtlrecError) as e:
        main([str(sweep), "--plot", str(tmp_path / "p")])
    assert str(e.value) == 'plots need matplotlib: pip install "mtlrec[plot]" (or drop --plot)'
    assert not (tmp_path / "p").exists()


def test_ple_gates_name_task_specific_and_shared_experts(tmp_path):
    pytest.importorskip("matplotlib")
    from mtlrec.report.plots import expert_labels, plot_gates, require_matplotlib

    config = {"model.name": "ple", "model.num_specific_experts": 2, "model.num_levels": 2}
    assert expert_labels(config, ["ctr", "cvr"], [0, 1, 2, 3, 4]) == (
        ["ctr.0", "ctr.1", "cvr.0", "cvr.1", "shared.0"],
        4,
    )
    assert expert_labels({"model.name": "mmoe"}, ["ctr"], [0, 1]) == (["0", "1"], 0)

    cfg = base_config(model__name="ple")
    cfg["model"].update(num_specific_experts=2, num_shared_experts=1, num_levels=2)
    run_dir = write_run(tmp_path / "ple", cfg, {"test/mean_auc": 0.7}, history=history(1, 5))
    (run,) = load_runs([run_dir])

    class KeepFigure:
        def __getattr__(self, name):
            return getattr(require_matplotlib(), name)

        def close(self, fig):
            self.fig = fig

    plt = KeepFigure()
    path = plot_gates(plt, [run], {run.path: "ple"}, tmp_path)
    assert_real_png(path, min_width=300)
    ax = plt.fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == [
        "ctr.0",
        "ctr.1",
        "cvr.0",
        "cvr.1",
        "shared.0",
    ]
    assert ax.get_title() == "ple\n(epoch 4, last of 2 levels)"
    assert ax.get_xlabel() == "expert (task-specific | shared)"
    require_matplotlib().close(plt.fig)


def test_gate_heatmaps_three_a_row_with_the_utilization_row_set_apart(tmp_path):
    """<= 3 heatmaps per row; the utilization (mean over tasks) row is last, named as a mean and
    set apart by a line, not drawn as if it were a task; epoch axes of the curves are integers."""
    pytest.importorskip("matplotlib")
    from mtlrec.report.plots import plot_gates, require_matplotlib

    runs = []
    for i in range(4):
        util = {f"gate/utilization/expert_{e}": 1 / 3 for e in range(3)}
        rows = [{"epoch": r["epoch"], **util, **r} for r in history(2, 3)]  # listed first
        run_dir = write_run(
            tmp_path / str(i), base_config(seed=i), {"test/mean_auc": 0.7}, history=rows
        )
        runs += load_runs([run_dir])
    tasks, _, _ = gate_matrix(runs[0].history, 2)
    assert tasks[-1] == "utilization" and tasks.count("utilization") == 1

    class KeepFigure:
        def __getattr__(self, name):
            return getattr(require_matplotlib(), name)

        def close(self, fig):
            self.fig = fig

    plt = KeepFigure()
    plot_gates(plt, runs, {r.path: r.path.name for r in runs}, tmp_path)
    panels = [ax for ax in plt.fig.axes if ax.get_title()]
    assert len(panels) == 4
    assert len({round(ax.get_position().y0, 3) for ax in panels}) == 2  # 3 + 1: two rows
    labels = [t.get_text() for t in panels[0].get_yticklabels()]
    assert labels[-1] == "all tasks (mean)" and "utilization" not in labels
    assert [ln.get_ydata()[0] for ln in panels[0].get_lines()] == [len(labels) - 1.5]
    require_matplotlib().close(plt.fig)


def test_a_plot_dir_of_other_pngs_is_refused_without_overwrite(sweep, tmp_path):
    """Through the CLI: a dir compare did not make keeps its images unless --overwrite; a dir
    compare made may be plotted into again."""
    pytest.importorskip("matplotlib")
    from helpers.cli import mtlrec

    mine = tmp_path / "figures"
    mine.mkdir()
    (mine / "learning_curves.png").write_bytes(b"my own figure")
    done = mtlrec("compare", str(sweep), "--plot", str(mine), "--format", "csv", cwd=tmp_path)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr.splitlines() == [
        f"mtlrec compare: error: --plot {mine}: holds learning_curves.png, which mtlrec compare "
        "did not write; plot into a new directory, or add --overwrite to replace its PNGs of the "
        "same names"
    ]
    assert (mine / "learning_curves.png").read_bytes() == b"my own figure"
    assert main([str(sweep), "--plot", str(mine), "--format", "csv", "--overwrite"]) == 0
    assert (mine / "learning_curves.png").read_bytes() != b"my own figure"
    # --overwrite handed the dir to compare (.mtlrec-plots): plotted into again without a word
    assert main([str(sweep), "--plot", str(mine), "--format", "csv"]) == 0
