"""Every model names its shared trunk's last layer (GradNorm's W) explicitly, and GradNorm takes
its norms there: not on the last shared weight matrix in registration order (which was OMoE's gate
and ESMM's CTR output layer)."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from mtlrec.data.ccp_generator import Setting
from mtlrec.data.sources.synthetic_ccp import ensure_prepared
from mtlrec.data.spec import DatasetSpec
from mtlrec.models import build_model
from mtlrec.models.registry import MODELS
from mtlrec.training.balance import make_balancer

# model -> the parameter name of its shared trunk's last layer under the default config (None:
# nothing shared). A new model adds its row here (the test below fails for a model without one).
TRUNK_LAYER: dict[str, str | None] = {
    "adatt": "levels.1.experts.linears.1.weight",
    "aitm": "embedding.tables.0.weight",
    "cvr_base": None,
    "dbmtl": "bottom.0.weight",
    "dcmt": "embedding.tables.0.weight",
    "division": None,
    "dselect_k": "experts.linears.1.weight",
    "escm2": "embedding.tables.0.weight",
    "esm2": "embedding.tables.0.weight",
    "esmm": "embedding.tables.0.weight",
    "mmoe": "experts.linears.1.weight",
    "omoe": "moe.experts.linears.1.weight",
    "pepnet": "epnet.out.weight",
    "ple": "extractor.levels.1.experts.linears.1.weight",
    "shared_bottom": "bottom.2.weight",
    "single_task": None,
    "snr": "upper_subnetworks.linears.0.weight",
    "stem": "levels.0.experts.linears.1.weight",
}
# Other backbones of the funnel models and shared-bottom.
BACKBONE_TRUNK = {
    ("esmm", "mmoe"): "backbone.experts.linears.1.weight",
    ("esmm", "ple"): "backbone.levels.0.experts.linears.1.weight",
    ("esmm", "dcn"): "interaction.cross.1.linear.weight",
    ("esmm", "deepfm"): "embedding.tables.0.weight",
    ("escm2", "dcn"): "interaction.cross.1.linear.weight",
    ("shared_bottom", "dcn"): "bottom.2.weight",
}


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    root = tmp_path_factory.mktemp("trunk")
    return DatasetSpec.load(ensure_prepared(root / "ccp", 2000, 0, Setting(action_rate=0.3)))


def _build(spec, name: str, overrides: list[str] = ()):
    from conftest import compose_train

    cfg = compose_train([f"model={name}", *overrides])
    model_cfg = OmegaConf.to_container(cfg["model"], resolve=True)
    torch.manual_seed(0)
    return build_model(model_cfg, spec, spec.tasks)


def _name_of(model, param) -> str | None:
    if param is None:
        return None
    return next(n for n, p in model.named_parameters() if p is param)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_names_its_trunk_layer(spec, name):
    assert name in TRUNK_LAYER, f"model {name}: add its shared trunk's last layer to TRUNK_LAYER"
    model, tasks = _build(spec, name)
    layer = model.shared_trunk_last_layer()
    assert _name_of(model, layer) == TRUNK_LAYER[name]
    if layer is not None and len(tasks) > 1:
        gradnorm = make_balancer({"name": "gradnorm"}, tasks, model)
        assert gradnorm._names[gradnorm._layer] == TRUNK_LAYER[name]
        assert gradnorm._rows[gradnorm._layer] is not None  # the tasks do share it


@pytest.mark.parametrize(("name", "backbone"), sorted(BACKBONE_TRUNK))
def test_the_trunk_layer_follows_the_backbone(spec, name, backbone):
    model, tasks = _build(spec, name, [f"model.backbone={backbone}"])
    layer = model.shared_trunk_last_layer()
    assert _name_of(model, layer) == BACKBONE_TRUNK[(name, backbone)]
    gradnorm = make_balancer({"name": "gradnorm"}, tasks, model)
    assert gradnorm._names[gradnorm._layer] == BACKBONE_TRUNK[(name, backbone)]


def test_omoe_and_esmm_no_longer_use_the_registration_order(spec):
    """The old rule: OMoE's gate (registered after the experts), ESMM's CTR output layer."""
    for name, old in (("omoe", "moe.gates.linears.0.weight"), ("esmm", "towers.ctr.1.weight")):
        model, tasks = _build(spec, name)
        gradnorm = make_balancer({"name": "gradnorm"}, tasks, model)
        shared = [
            n
            for n, p, m in zip(gradnorm._names, gradnorm._params, gradnorm._rows, strict=True)
            if m is not None and p.dim() >= 2 and not n.endswith("bias")
        ]
        assert shared[-1] == old  # what registration order gives
        assert gradnorm._names[gradnorm._layer] == TRUNK_LAYER[name]
