"""docs/models.md has, for every registered model and balancer, a section headed by its config
name (`### \\`esmm\\``, `### \\`balance=gradnorm\\``) with ONE table of the header below, and every
option it lists (`model.KEY`, `balance.KEY`) is a key of conf/model/NAME.yaml / conf/balance/NAME.yaml.
The sections of this issue's models list every key (FULL); other sections may refer to a group of
keys in words (e.g. "ESMM's keys")."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from mtlrec.models.registry import MODELS
from mtlrec.training.balance import BALANCERS

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "models.md"
HEADER = "| formula | paper | reference code | mtlrec default | options |"
# Sections that list every key of their config (the zoo's first twelve models and five balancers).
FULL_BALANCERS = {"dwa", "fixed", "gradnorm", "pcgrad", "uncertainty"}
FULL = {
    "aitm", "cvr_base", "division", "escm2", "esm2", "esmm", "mmoe", "omoe", "ple",
    "shared_bottom", "single_task", "snr",
}  # fmt: skip
HEADING = re.compile(r"^### `(balance=)?([a-z0-9_]+)`\s*$")


def sections() -> dict[str, list[str]]:
    """'esmm' / 'balance=gradnorm' -> the lines of its section (up to the next ### or ## heading)."""
    out: dict[str, list[str]] = {}
    current: str | None = None
    for line in DOC.read_text().splitlines():
        if line.startswith(("## ", "### ")):
            m = HEADING.match(line)
            current = (m.group(1) or "") + m.group(2) if m else None
            if current is not None:
                assert current not in out, f"docs/models.md: two sections for {current}"
                out[current] = []
            continue
        if current is not None:
            out[current].append(line)
    return out


SECTIONS = sections()


def table(name: str) -> list[list[str]]:
    """The rows (cells) of the section's one table, after the header and the rule."""
    lines = SECTIONS[name]
    headers = [i for i, line in enumerate(lines) if line.strip() == HEADER]
    tables = [line for line in lines if line.startswith("| ") and "| --- |" not in line]
    assert len(headers) == 1, f"section {name}: want ONE table headed {HEADER}"
    rows = []
    for line in lines[headers[0] + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]])
    assert rows, f"section {name}: the table has no row"
    assert len(tables) == 1 + len(rows), f"section {name}: a second table"
    return rows


def config_keys(kind: str, name: str) -> set[str]:
    data = yaml.safe_load((ROOT / "conf" / kind / f"{name}.yaml").read_text())
    return set(data) - {"name"}


def listed(rows: list[list[str]], prefix: str) -> set[str]:
    assert all(len(r) == 5 for r in rows)
    return {m for r in rows for m in re.findall(rf"`{prefix}\.([a-z0-9_]+)`", r[4])}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_has_its_section_and_every_option_is_a_config_key(name):
    assert name in SECTIONS, f"docs/models.md: add a section '### `{name}`' with the table"
    options = listed(table(name), "model")
    keys = config_keys("model", name)
    assert options, f"{name}: the options column lists no `model.KEY`"
    assert options - keys == set(), f"{name}: listed options that conf/model/{name}.yaml lacks"
    if name in FULL:
        assert keys - options == set(), f"{name}: conf/model/{name}.yaml keys not listed"


@pytest.mark.parametrize("name", sorted(BALANCERS))
def test_every_balancer_has_its_section_and_every_option_is_a_config_key(name):
    section = f"balance={name}"
    assert section in SECTIONS, f"docs/models.md: add a section '### `{section}`' with the table"
    options = listed(table(section), "balance")
    keys = config_keys("balance", name)
    assert options - keys == set(), f"{name}: listed options that conf/balance/{name}.yaml lacks"
    if name in FULL_BALANCERS:
        assert keys - options == set(), f"{name}: conf/balance/{name}.yaml keys not listed"


def test_every_section_names_something_that_exists():
    known = set(MODELS) | {f"balance={b}" for b in BALANCERS}
    assert set(SECTIONS) - known == set()


def test_the_doc_says_din_attention_is_wired_and_names_the_trunk_layers():
    text = DOC.read_text()
    assert "not wired" not in text and "pooling: target_attention" in text
    for name in FULL:  # where GradNorm takes its norms (tests/models/test_trunk_layer.py)
        assert any(line.startswith("Trunk layer:") for line in SECTIONS[name]), name
