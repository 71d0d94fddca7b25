"""Shared parameters are found from the model's structure (a probe batch), never from a batch's
labels: a `where:` task with no rows in the first batch no longer turns PCGrad into a no-op."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from mtlrec.data.loader import load_split
from mtlrec.data.sources.synthetic_ccp import ensure_prepared
from mtlrec.data.spec import DatasetSpec
from mtlrec.errors import MtlrecError
from mtlrec.models import build_model
from mtlrec.training.balance import BALANCERS, find_shared, make_balancer, task_gradients
from mtlrec.training.balance.sharing import SharedParamsBalancer, structural_layout
from mtlrec.training.objective import Objective

SHARING = sorted(n for n, cls in BALANCERS.items() if issubclass(cls, SharedParamsBalancer))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = ensure_prepared(tmp_path_factory.mktemp("ccp") / "ccp", 4000, 0)
    spec = DatasetSpec.load(path)
    return spec, load_split(path / spec.splits["train"], spec)


def _model(spec, overrides: list[str]):
    from conftest import compose_train

    cfg = OmegaConf.to_container(compose_train(overrides), resolve=True)
    torch.manual_seed(0)
    return build_model(cfg["model"], spec, spec.tasks)


def _batch_losses(model, tasks, spec, train, clicked: bool):
    """Mean task losses of 256 training rows that all have (or all lack) a click."""
    click = train.labels[:, spec.label_index("click")]
    rows = torch.nonzero(click == (1.0 if clicked else 0.0)).squeeze(1)[:256]
    objective = Objective(tasks, spec, getattr(model, "extra_loss", None))
    means, *_ = objective.losses(model(train.sparse[rows], train.dense[rows]), train.labels[rows])
    return means


def test_a_first_batch_without_clicks_does_not_hide_the_shared_layers(tiny):
    spec, train = tiny
    model, tasks = _model(spec, ["model=mmoe"])
    assert [t.where for t in tasks] == [None, "click"]
    no_clicks = _batch_losses(model, tasks, spec, train, clicked=False)
    params = [p for p in model.parameters() if p.requires_grad]
    # the old first-batch rule: cvr (0 rows) reaches nothing, so nothing looks shared
    assert not any(find_shared(params, task_gradients(no_clicks, params)))
    pcgrad = make_balancer({"name": "pcgrad"}, tasks, model)
    names = [n for n, m in zip(pcgrad._names, pcgrad._rows, strict=True) if m is not None]
    assert names == [
        "embedding.tables.0.weight",
        "experts.linears.0.weight",
        "experts.linears.0.bias",
        "experts.linears.1.weight",
        "experts.linears.1.bias",
    ]
    assert all(bool(m.all()) for m in pcgrad._rows if m is not None)  # every unit is shared
    pcgrad.backward(no_clicks, model)
    model.zero_grad()
    pcgrad.backward(_batch_losses(model, tasks, spec, train, clicked=True), model)
    assert pcgrad.pairs == 2  # both steps projected the shared parameters
    # GradNorm takes its norms on the experts' output layer, also after a click-free batch
    gradnorm = make_balancer({"name": "gradnorm"}, tasks, model)
    assert gradnorm._names[gradnorm._layer] == "experts.linears.1.weight"
    model.zero_grad()
    gradnorm.backward(_batch_losses(model, tasks, spec, train, clicked=False), model)
    # (the old rule raised "needs a layer shared by the tasks" here); cvr has no rows: norm 0
    grad_w = gradnorm.task_weights.grad
    assert grad_w is not None and grad_w[0] != 0 and grad_w[1] == 0


def test_the_probe_leaves_the_model_and_the_random_streams_alone(tiny):
    spec, _ = tiny
    model, tasks = _model(spec, ["model=shared_bottom", "model.batch_norm=true"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.random.get_rng_state()
    layout = structural_layout(model, tasks)
    assert layout is not None and any(m is not None for m in layout.rows)
    assert model.training  # restored after the eval-mode probe
    assert torch.equal(torch.random.get_rng_state(), rng)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN statistics untouched
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("balance", SHARING)
def test_a_model_that_shares_nothing_is_one_line_at_construction(tiny, balance):
    spec, _ = tiny
    model, tasks = _model(spec, ["model=single_task"])
    with pytest.raises(MtlrecError) as err:
        make_balancer({"name": balance}, tasks, model)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"balance={balance} needs ")
    assert message.endswith(
        "this model shares none (e.g. model=single_task); use balance=fixed, uncertainty or dwa"
    )
