"""torch.compile, autocast, GradScaler and wrappers, in one process (DDP and FSDP: test_distributed.py)."""

from __future__ import annotations

import pytest
import torch
from nets import TinyNet
from torch import nn
from torch._dynamo.utils import counters
from torch.nn import functional as F

import backbone
from backbone import MNISTMLP, check_backbone, unwrap

RETURNTS = ["out", "features", "both", "full"]


def small(name: str) -> tuple[backbone.MammothBackbone, tuple[int, ...]]:
    torch.manual_seed(0)
    if name == "mnistmlp":
        return MNISTMLP(12, 5, hidden_size=7), (4, 12)
    if name == "resnet18":
        return backbone.resnet18(5, num_filters=4), (4, 3, 16, 16)
    if name == "resnet50":  # bottleneck blocks: the other code path of the ResNets
        return backbone.resnet50(5, num_filters=2), (4, 3, 16, 16)
    vit = backbone.VisionTransformer(img_size=16, patch_size=4, num_classes=5, embed_dim=8, depth=2, num_heads=2)
    return vit, (4, 3, 16, 16)


NAMES = ["mnistmlp", "resnet18", "resnet50", "vit"]


def flatten(output: object) -> list[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return [output]
    assert isinstance(output, (tuple, list))
    return [t for item in output for t in flatten(item)]


@pytest.mark.parametrize("name", NAMES)
def test_compiled_with_inductor_equals_eager_with_one_graph_per_returnt(name: str) -> None:
    net, shape = small(name)
    net.eval()
    x = torch.randn(shape)
    torch.compiler.reset()
    counters.clear()
    compiled = torch.compile(net)  # CPU, inductor
    with torch.no_grad():
        for _ in range(2):  # the second round must hit the graphs of the first
            for returnt in RETURNTS:
                for a, b in zip(flatten(compiled(x, returnt=returnt)), flatten(net(x, returnt=returnt)), strict=True):
                    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert counters["stats"]["unique_graphs"] == len(RETURNTS)  # one graph per returnt, no recompiles
    assert not counters["graph_break"]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("returnt", RETURNTS)
def test_no_graph_breaks(name: str, returnt: str) -> None:
    net, shape = small(name)
    explanation = torch._dynamo.explain(net)(torch.randn(shape), returnt=returnt)
    assert (explanation.graph_count, explanation.graph_break_count) == (1, 0)


def test_the_checker_works_on_a_compiled_module_without_compiling() -> None:
    net, shape = small("resnet18")
    torch.compiler.reset()
    counters.clear()
    results = check_backbone(torch.compile(net), torch.randn(shape))
    assert all(r.status == "pass" for r in results)
    assert counters["stats"]["unique_graphs"] == 0


def test_a_checkpoint_saved_from_a_compiled_backbone_loads_into_an_eager_one() -> None:
    net, _ = small("resnet18")
    state = torch.compile(net).state_dict()
    assert next(iter(state)).startswith("_orig_mod.")
    eager, _ = small("resnet18")
    with torch.no_grad():
        for p in eager.parameters():
            p.zero_()
    eager.load_state_dict(state)  # strict
    assert torch.equal(eager.get_params(), net.get_params())


def test_unwrap_reaches_the_backbone_through_every_wrapper() -> None:
    net = TinyNet()
    assert unwrap(net) is net
    assert unwrap(nn.DataParallel(net)) is net
    compiled = torch.compile(nn.DataParallel(net))
    assert unwrap(compiled) is net and not isinstance(compiled, backbone.MammothBackbone)
    assert torch.equal(unwrap(compiled).get_params(), backbone.get_params(compiled))
    assert unwrap(nn.Sequential(net)) is not net  # not a wrapper: a model that contains the backbone


def test_unwrap_sees_a_subclass_of_a_wrapper() -> None:
    class MyDataParallel(nn.DataParallel):  # as projects subclass it to forward attributes
        pass

    net = TinyNet()
    assert unwrap(MyDataParallel(net)) is net


@pytest.mark.parametrize("name", NAMES)
def test_every_returnt_under_autocast_bfloat16(name: str) -> None:
    net, shape = small(name)
    net.eval()
    x = torch.randn(shape)
    with torch.no_grad():
        reference = {returnt: flatten(net(x, returnt=returnt)) for returnt in RETURNTS}
        with torch.autocast("cpu", dtype=torch.bfloat16):
            for returnt in RETURNTS:
                outputs = flatten(net(x, returnt=returnt))
                assert [o.shape for o in outputs] == [r.shape for r in reference[returnt]]
                for out, ref in zip(outputs, reference[returnt], strict=True):
                    torch.testing.assert_close(out.float(), ref, rtol=0.1, atol=0.1)
                if returnt != "features":
                    assert outputs[0].dtype == torch.bfloat16  # the classifier ran in bfloat16


def test_unscaled_gradients_under_a_grad_scaler() -> None:
    torch.manual_seed(0)
    net = MNISTMLP(12, 5, hidden_size=7)
    x, y = torch.randn(8, 12), torch.randint(0, 5, (8,))
    F.cross_entropy(net(x), y).backward()
    expected = net.get_grads()
    net.zero_grad()
    before = net.get_params()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler.scale(F.cross_entropy(net(x), y)).backward()
    torch.testing.assert_close(net.get_grads(), 1024.0 * expected)  # the pitfall: scaled until unscale_
    scaler.unscale_(optimizer)
    torch.testing.assert_close(net.get_grads(), expected)  # the documented way
    net.set_grads(net.get_grads() * 0.5)  # a projection here works on true gradients
    scaler.step(optimizer)  # does not unscale a second time
    scaler.update()
    assert scaler.get_scale() == 1024.0
    # The step used the halved, unscaled gradients that set_grads wrote.
    torch.testing.assert_close(net.get_params(), before - 0.1 * 0.5 * expected)
