"""A model never drops a dataset task without a word: ESMM on data with a third target says which
task it leaves out (it trains ctr and ctcvr, scores cvr, and cannot score `share`)."""

from __future__ import annotations

import logging

import numpy as np
import yaml

from helpers.datagen import byo_config, make_events, prepare, train


def test_a_funnel_model_names_the_task_it_leaves_out(tmp_path, caplog, monkeypatch):
    raw = tmp_path / "raw"
    raw.mkdir()
    df = make_events(1000)
    df["share"] = (np.random.default_rng(1).random(len(df)) < 0.3).astype(int)
    for name, rows in (
        ("train", df.iloc[:600]),
        ("val", df.iloc[600:800]),
        ("test", df.iloc[800:]),
    ):
        rows.to_csv(raw / f"{name}.csv", index=False)
    cfg = byo_config(raw, tmp_path / "data")
    cfg["targets"]["share"] = {"label": "share", "type": "binary"}
    conf = tmp_path / "conf" / "dataset"
    conf.mkdir(parents=True)
    (conf / "three.yaml").write_text(yaml.safe_dump(cfg))
    monkeypatch.chdir(tmp_path)
    search = f"hydra.searchpath=[file://{tmp_path / 'conf'}]"
    prepare([search, "dataset=three"])
    args = [search, "dataset=three", "trainer.epochs=1", "trainer.batch_size=128"]
    with caplog.at_level(logging.WARNING, logger="mtlrec"):
        train(tmp_path / "esmm", [*args, "model=esmm"])
    assert (
        "model esmm trains ctr, ctcvr and leaves out the dataset's task(s) share (label share): "
        "neither trained nor scored (a model that trains dataset.tasks, e.g. model=mmoe, trains "
        "them all)"
    ) in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mtlrec"):
        train(tmp_path / "mmoe", [*args, "model=mmoe"])
    assert "leaves out" not in caplog.text  # mmoe trains every dataset task
