"""A resume attempt never rewrites how the run started; a refused attempt changes nothing."""

import json

from conftest import TINY
from helpers.cli import mtlrec
from mtlrec.cli import translate_resume


def test_refused_resume_leaves_the_run_record_and_the_next_resume_alone(tmp_path):
    run_dir = tmp_path / "run"
    first = mtlrec("train", *TINY, "trainer.epochs=1", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    hydra_dir = run_dir / ".hydra"
    before = {p.name: p.read_bytes() for p in hydra_dir.glob("*.yaml")}

    refused = mtlrec("train", f"resume={run_dir}", "trainer.lr=0.5", cwd=tmp_path)
    assert refused.returncode == 1 and "differ from the run's config" in refused.stderr
    assert {p.name: p.read_bytes() for p in hydra_dir.glob("*.yaml")} == before
    assert list(hydra_dir.glob("resume-*")) == []
    # the refused attempt is not replayed by the next resume
    assert not any(a.startswith("trainer.lr") for a in translate_resume([f"resume={run_dir}"]))

    extended = mtlrec("train", f"resume={run_dir}", "trainer.epochs=2", cwd=tmp_path)
    assert extended.returncode == 0, extended.stderr
    assert {p.name: p.read_bytes() for p in hydra_dir.glob("*.yaml")} == before
    assert json.loads((run_dir / "metrics.json").read_text())["epochs_run"] == 2
    accepted = sorted(hydra_dir.glob("resume-*/ACCEPTED"))
    # the refused attempt left no resume-* dir behind (it is undone whole); the accepted one did
    assert len(accepted) == 1 and len(list(hydra_dir.glob("resume-*"))) == 1
    # a later plain resume replays the accepted attempt's overrides (trainer.epochs=2)
    replay = translate_resume([f"resume={run_dir}"])
    assert "trainer.epochs=2" in replay and "trainer.epochs=1" not in replay
