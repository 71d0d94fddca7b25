"""A checkpoint bound to its run and to the data it was trained on.

Every checkpoint records three things besides its weights: the model name, the run's config hash
(SHA-256 of the config the run was STARTED with, without the keys a resume may change, so every
checkpoint of one run carries the same hash) and the fingerprint of its prepared dataset
(SHA-256 of spec.json's features, labels and generator, encoders.json and the vocabulary file:
what gives an id its meaning; not the rows or the splits). The run dir's metrics.json records the model and the config hash when the
run starts.

`mtlrec evaluate / predict / export` and `resume=` compare both sides and refuse a mismatch in
one line naming both: ESMM's best.pt copied into an MMoE run dir, or a dataset prepared again at
the same path with other ids. A checkpoint or run dir written before these fields existed is
used as before, after one warning line saying it is not checked (users have such runs).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from mtlrec.data.encoders import ENCODERS_FILE
from mtlrec.data.spec import SPEC_FILE
from mtlrec.errors import MtlrecError
from mtlrec.training.checkpoint import MODEL_NAME_KEY, RESUME_MAY_CHANGE, flatten

CONFIG_HASH_KEY = "config_hash"
DATASET_KEY = "dataset_fingerprint"
# "fp1:<sha256>": a later mtlrec that fingerprints differently changes the tag, and checkpoints
# with another tag are then not compared (a warning) rather than refused.
FINGERPRINT = "fp1"
SHOWN = 12  # hex digits of a hash shown in a message


class NotThisRun(MtlrecError):
    """A checkpoint used with a run or a dataset it does not belong to."""


def config_hash(config: dict) -> str:
    """SHA-256 of the config's keys and values, without those a resume may change."""
    flat = {
        k: v
        for k, v in flatten(config).items()
        if not any(k == m or k.startswith(m) for m in RESUME_MAY_CHANGE)
    }
    return hashlib.sha256(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()


def dataset_fingerprint(data_dir: Path) -> str | None:
    """SHA-256 of what gives the ids of a prepared dataset their meaning; None: no spec.json."""
    spec_file = Path(data_dir) / SPEC_FILE
    try:
        spec = json.loads(spec_file.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(spec, dict):
        return None
    digest = hashlib.sha256()
    info = spec.get("info")
    info = info if isinstance(info, dict) else {}
    meaning = {
        "features": spec.get("features"),
        "labels": spec.get("labels"),
        # a generated dataset: the generator and its seed give the ids their meaning
        "generator": [info.get(k) for k in ("generator", "generator_version", "generator_seed")],
    }
    digest.update(json.dumps(meaning, sort_keys=True, default=str).encode())
    encoders = Path(data_dir) / ENCODERS_FILE
    if encoders.is_file():
        text = encoders.read_bytes()
        digest.update(text)
        try:
            vocab_name = str(json.loads(text).get("vocab_file") or "")
        except (ValueError, AttributeError):
            vocab_name = ""
        vocab = Path(data_dir) / vocab_name
        if vocab_name and Path(vocab_name).name == vocab_name and vocab.is_file():
            with open(vocab, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
    return f"{FINGERPRINT}:{digest.hexdigest()}"


def checkpoint_fields(config_digest: str, data_dir: Path) -> dict[str, Any]:
    """The binding fields of a new checkpoint (make_payload's `info`)."""
    return {CONFIG_HASH_KEY: config_digest, DATASET_KEY: dataset_fingerprint(data_dir)}


def _short(digest: Any) -> str:
    return str(digest).rpartition(":")[2][:SHOWN] if digest else "unknown"


def warn_unbound(ckpt: Path, what: str) -> None:
    print(
        f"warning: {ckpt}: {what} (written before mtlrec bound checkpoints to their run and "
        "data), so it is not checked against them; it is used as it is",
        file=sys.stderr,
        flush=True,
    )


def check_run(payload: dict, ckpt: Path, run_dir: Path, model: Any, digest: Any) -> None:
    """The checkpoint belongs to the run in `run_dir`, whose metrics.json records `model` and
    the config hash `digest` (None: a run dir from before, not checked)."""
    have_model, have_hash = payload.get(MODEL_NAME_KEY), payload.get(CONFIG_HASH_KEY)
    if have_hash is None:
        warn_unbound(ckpt, "the checkpoint records no config hash")
        return
    if (digest is not None and have_hash != digest) or (model is not None and have_model != model):
        raise NotThisRun(
            f"{ckpt}: checkpoint of model '{have_model}' with config {_short(have_hash)}, but "
            f"{run_dir} is a run of model '{model}' with config {_short(digest)}; it belongs to "
            "another run: use this run's own checkpoint, or the run that wrote it"
        )
    if digest is None:
        warn_unbound(ckpt, f"the run dir {run_dir} records no config hash")


def run_hash(payload: dict, config: dict) -> str:
    """The config hash of a run from before the binding: its checkpoint's, else its config's."""
    return str(payload.get(CONFIG_HASH_KEY) or config_hash(config))


def check_dataset(payload: dict, ckpt: Path, data_dir: Path | None) -> None:
    """The prepared dataset in `data_dir` is the one the checkpoint was trained on."""
    want = payload.get(DATASET_KEY)  # none: an older checkpoint (check_run warned)
    if want is None or data_dir is None:
        return
    got = dataset_fingerprint(data_dir)
    if got is None or want == got:
        return
    if str(want).partition(":")[0] != FINGERPRINT:
        warn_unbound(ckpt, "the checkpoint's dataset fingerprint is of another mtlrec version")
        return
    raise NotThisRun(
        f"{ckpt}: checkpoint was trained on dataset {_short(want)}, but {data_dir} is now "
        f"dataset {_short(got)} (prepared again: other ids, encoders or features); use the "
        "dataset the run was trained on, or train a new run on this one"
    )
