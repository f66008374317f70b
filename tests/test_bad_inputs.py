"""Every public entry point, given bad input: the documented error, and nothing changed.

Each row of ``MATRIX`` builds a fresh model, makes one bad call, and checks
the exception type, a fragment of its message, and that the model's
parameters (objects and values), gradients (objects and values), buffers,
training modes and the registry are exactly as before. The fragments are the
ones listed on the Errors page (docs/errors.rst); ``test_the_errors_page_
lists_exactly_the_matrix`` keeps the two in step.
"""

from __future__ import annotations

import re
import warnings
from argparse import Namespace
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from nets import TinyNet
from torch import Tensor, nn
from torch.nn.utils import parametrizations, parametrize

import backbone
from backbone import MammothBackbone, list_backbones, mammoth, registered

ERRORS_PAGE = Path(__file__).resolve().parents[1] / "docs" / "errors.rst"


@dataclass(frozen=True)
class Bad:
    id: str
    call: Callable[[Any], object]
    error: type[Exception]
    message: str
    build: Callable[[], nn.Module] = TinyNet


def numel(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def with_grads(net: nn.Module | None = None) -> nn.Module:
    net = TinyNet() if net is None else net
    net(torch.randn(3, 4)).sum().backward()
    return net


def half_grads() -> nn.Module:
    """Gradients on the first parameters only: a half-way write would show."""
    net = TinyNet()
    for p in list(net.parameters())[:3]:
        p.grad = torch.randn_like(p)
    return net


def last_param(net: nn.Module) -> nn.Parameter:
    return list(net.parameters())[-1]


def inference_param_last() -> nn.Module:
    net = with_grads()
    with torch.inference_mode():
        net.classifier.bias = nn.Parameter(torch.zeros(2))
    return net


def expanded_param_last() -> nn.Module:
    net = TinyNet()
    net.classifier.bias = nn.Parameter(torch.zeros(1).expand(2))
    return net


def expanded_grad_last() -> nn.Module:
    net = half_grads()
    last_param(net).grad = torch.zeros(1).expand(2)
    return net


def inference_grad_last() -> nn.Module:
    net = half_grads()
    with torch.inference_mode():
        grad = torch.zeros(2)
    last_param(net).grad = grad
    return net


class SparseEmbeddingNet(TinyNet):
    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(5, 2, sparse=True)


def sparse_grad_last() -> nn.Module:
    net = half_grads()
    embedding = nn.Embedding(5, 2, sparse=True)
    embedding(torch.tensor([1, 1, 3])).sum().backward()
    net.embedding = embedding
    return net


def fsdp1_like() -> nn.Module:
    """A parameter marked as FSDP's FlatParameter marks itself: a rank-local shard."""
    net = TinyNet()
    net.stage2.weight._is_flat_param = True  # type: ignore[attr-defined]
    return net


def adafactor_after_a_step() -> nn.Module:
    """A net with an optimizer whose state for the classifier's weight is factored into row and column statistics."""
    net = TinyNet()
    net.optimizer = torch.optim.Adafactor(net.parameters(), lr=0.01)
    for p in net.parameters():
        p.grad = torch.ones_like(p)
    net.optimizer.step()
    net.zero_grad(set_to_none=True)
    return net


def stale_gradient() -> nn.Module:
    """A parameter whose data was replaced by another shape after its gradient was made."""
    net = TinyNet()
    net.set_grads(torch.ones(N))
    net.stage1.weight.data = net.stage1.weight.data.t()  # (3, 4) becomes (4, 3)
    return net


def half_meta() -> nn.Module:
    """A model with one parameter on the meta device (it has a shape, not values)."""
    net = TinyNet()
    net.stage2.weight = nn.Parameter(torch.empty(net.stage2.weight.shape, device="meta"))
    return net


class SparseParameterNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.dense = nn.Parameter(torch.ones(3))
        self.sparse = nn.Parameter(torch.sparse_coo_tensor([[0]], [1.0], (4,)))


class ViewsOfOneBuffer(nn.Module):
    """Parameters that are views of one buffer, with gradients that are too."""

    def __init__(self) -> None:
        super().__init__()
        self.storage = torch.arange(20.0)
        self.a = nn.Parameter(self.storage[0:6].view(2, 3))
        self.b = nn.Parameter(self.storage[6:8])
        self.grad_storage = torch.zeros(8)
        self.a.grad = self.grad_storage[0:6].view(2, 3)
        self.b.grad = self.grad_storage[6:8]


def linear_with(hooked: Callable[[nn.Linear], nn.Module]) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return hooked(nn.Linear(4, 3))

    return build


class Double(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return 2 * x


def no_right_inverse() -> nn.Module:
    return parametrize.register_parametrization(nn.Linear(4, 3), "weight", Double())


class SequentialHead(TinyNet):
    def __init__(self) -> None:
        super().__init__()
        self.classifier = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2))


class WeightNormHead(TinyNet):
    def __init__(self) -> None:
        super().__init__()
        self.classifier = parametrizations.weight_norm(nn.Linear(3, 2))


def meta(n: int) -> Tensor:
    return torch.zeros(n, device="meta")


def sparse(n: int) -> Tensor:
    return torch.zeros(n).to_sparse()


def inference(n: int) -> Tensor:
    with torch.inference_mode():
        return torch.zeros(n)


def register(name: object, **kwargs: Any) -> object:
    return backbone.register_backbone(name, **kwargs)(backbone.MNISTMLP)  # type: ignore[arg-type]


N = 35  # numel(TinyNet())

# One row per bad call; kept one line a row so that the table reads as one.
# fmt: off
MATRIX = [
    # --- flat getters ------------------------------------------------------
    Bad("get_params/module", lambda n: backbone.get_params("net"), TypeError, "expected a torch.nn.Module, got"),
    Bad("get_grads/module", lambda n: backbone.get_grads(None), TypeError, "expected a torch.nn.Module, got"),
    Bad("get_grads_list/module", lambda n: backbone.get_grads_list(3), TypeError, "expected a torch.nn.Module, got"),
    Bad("out/list", lambda n: n.get_params(out=[0.0] * N), TypeError, "out must be a torch.Tensor, got"),
    Bad("out/2d", lambda n: n.get_grads(out=torch.zeros(5, 7)), ValueError, "out must be a 1-D tensor, got shape"),
    Bad("out/length", lambda n: n.get_grads(out=torch.zeros(N - 1)), ValueError, "(one per parameter element), got"),
    Bad("out/int", lambda n: n.get_params(out=torch.zeros(N, dtype=torch.int64)), TypeError, "out must have the result's dtype"),
    Bad("out/bool", lambda n: n.get_grads(out=torch.zeros(N, dtype=torch.bool)), TypeError, "out must have the result's dtype"),
    Bad("out/float64", lambda n: n.get_grads(out=torch.zeros(N, dtype=torch.float64)), TypeError, "out must have the result's dtype"),
    Bad("out/meta", lambda n: n.get_params(out=meta(N)), ValueError, "must hold data, got a tensor on the meta device"),
    Bad("out/sparse", lambda n: n.get_grads(out=sparse(N)), TypeError, "must be a dense (strided) tensor, got layout"),
    Bad("out/expanded", lambda n: n.get_grads(out=torch.zeros(1).expand(N)), ValueError, "cannot be written element by element"),
    Bad("out/inference", lambda n: n.get_params(out=inference(N)), ValueError, "is an inference tensor"),
    Bad("out/a-parameter", lambda n: backbone.get_params(n, out=n.storage[0:8]), ValueError, "out must not share memory with the model", ViewsOfOneBuffer),
    Bad("out/a-parameter-tail", lambda n: backbone.get_grads(n, out=n.storage[7:15]), ValueError, "out must not share memory with the model", ViewsOfOneBuffer),
    Bad("out/a-gradient", lambda n: backbone.get_grads(n, out=n.grad_storage), ValueError, "out must not share memory with the model", ViewsOfOneBuffer),
    Bad("get_grads/stale-gradient", lambda n: backbone.get_grads(n), ValueError, "must match the parameter", stale_gradient),
    Bad("get_grads_list/stale-gradient", lambda n: backbone.get_grads_list(n), ValueError, "must match the parameter", stale_gradient),
    Bad("set_grads/stale-gradient", lambda n: backbone.set_grads(n, torch.zeros(N)), ValueError, "must match the parameter", stale_gradient),
    Bad("add_grads/stale-gradient", lambda n: backbone.add_grads(n, torch.zeros(N)), ValueError, "must match the parameter", stale_gradient),
    Bad("get_params/meta-parameter", lambda n: backbone.get_params(n), ValueError, "is on the meta device and holds no data to read", half_meta),
    Bad("out/meta-parameter", lambda n: backbone.get_params(n, out=torch.zeros(N)), ValueError, "is on the meta device and holds no data to read", half_meta),
    Bad("getters/sharded-parameter", lambda n: backbone.get_grads(n), TypeError, "is sharded by FSDP", lambda: fsdp1_like()),
    Bad("unwrap/module", lambda n: backbone.unwrap("net"), TypeError, "expected a torch.nn.Module, got"),
    Bad("getters/sparse-parameter", lambda n: backbone.get_params(n), TypeError, "must be a dense (strided) tensor, got layout", SparseParameterNet),
    Bad("get_grads_list/sparse-parameter", lambda n: backbone.get_grads_list(n), TypeError, "must be a dense (strided) tensor, got layout", SparseParameterNet),
    # --- flat setters ------------------------------------------------------
    Bad("set_params/module", lambda n: backbone.set_params([], torch.zeros(0)), TypeError, "expected a torch.nn.Module, got"),
    Bad("set_params/list", lambda n: n.set_params([0.0] * N), TypeError, "new_params must be a torch.Tensor, got"),
    Bad("set_params/2d", lambda n: n.set_params(torch.zeros(5, 7)), ValueError, "new_params must be a 1-D tensor, got shape"),
    Bad("set_params/length", lambda n: n.set_params(torch.zeros(N + 1)), ValueError, "(one per parameter element), got"),
    Bad("set_params/complex", lambda n: n.set_params(torch.zeros(N, dtype=torch.complex64)), TypeError, "which cannot be cast to the parameters'"),
    Bad("set_params/meta", lambda n: n.set_params(meta(N)), ValueError, "must hold data, got a tensor on the meta device"),
    Bad("set_params/sparse", lambda n: n.set_params(sparse(N)), TypeError, "must be a dense (strided) tensor, got layout"),
    Bad("set_params/inference-parameter", lambda n: n.set_params(torch.ones(N)), ValueError, "is an inference tensor", inference_param_last),
    Bad("set_params/expanded-parameter", lambda n: n.set_params(torch.ones(N)), ValueError, "cannot be written element by element", expanded_param_last),
    Bad("set_params/sparse-parameter", lambda n: backbone.set_params(n, torch.ones(7)), TypeError, "must be a dense (strided) tensor, got layout", SparseParameterNet),
    Bad("add_grads/alpha", lambda n: backbone.add_grads(n, torch.ones(N), alpha="2"), TypeError, "alpha must be a real number", half_grads),
    Bad("add_grads/length", lambda n: backbone.add_grads(n, torch.ones(N + 1)), ValueError, "(one per parameter element), got", half_grads),
    Bad("add_grads/expanded-grad", lambda n: backbone.add_grads(n, torch.ones(N)), ValueError, "cannot be written element by element", expanded_grad_last),
    Bad("add_grads/vector", lambda n: backbone.add_grads(n, [1.0] * N), TypeError, "vector must be a torch.Tensor", half_grads),
    Bad("set_grads/list", lambda n: n.set_grads((0.0,) * N), TypeError, "new_grads must be a torch.Tensor, got"),
    Bad("set_grads/length", lambda n: n.set_grads(torch.zeros(N - 1)), ValueError, "(one per parameter element), got", half_grads),
    Bad("set_grads/complex", lambda n: n.set_grads(torch.zeros(N, dtype=torch.complex128)), TypeError, "which cannot be cast to the parameters'", half_grads),
    Bad("set_grads/meta", lambda n: n.set_grads(meta(N)), ValueError, "must hold data, got a tensor on the meta device", half_grads),
    Bad("set_grads/sparse", lambda n: n.set_grads(sparse(N)), TypeError, "must be a dense (strided) tensor, got layout", half_grads),
    Bad("set_grads/expanded-grad", lambda n: n.set_grads(torch.ones(N)), ValueError, "cannot be written element by element", expanded_grad_last),
    Bad("set_grads/inference-grad", lambda n: n.set_grads(torch.ones(N)), ValueError, "is an inference tensor", inference_grad_last),
    Bad("set_grads/sparse-grad", lambda n: n.set_grads(torch.ones(N + 10)), TypeError, "must be dense (strided) to be written in place", sparse_grad_last),
    # --- helpers -----------------------------------------------------------
    Bad("xavier/none", lambda n: backbone.xavier(None), TypeError, "xavier expects a torch.nn.Module, got"),
    Bad("xavier/lazy", lambda n: backbone.xavier(n), TypeError, "xavier expects a materialised weight", lambda: nn.LazyLinear(3)),
    Bad("xavier/spectral-norm", lambda n: backbone.xavier(n), TypeError, "that can represent any weight", linear_with(parametrizations.spectral_norm)),
    Bad("xavier/orthogonal", lambda n: backbone.xavier(n), TypeError, "that can represent any weight", lambda: parametrizations.orthogonal(nn.Linear(3, 3))),
    Bad("xavier/no-right-inverse", lambda n: backbone.xavier(n), TypeError, "to have right_inverse", no_right_inverse),
    Bad("xavier/hook", lambda n: backbone.xavier(n), TypeError, "to be a parameter or a parametrization", linear_with(nn.utils.spectral_norm)),
    Bad("num_flat_features/list", lambda n: backbone.num_flat_features([1, 2]), TypeError, "x must be a torch.Tensor, got"),
    Bad("num_flat_features/0d", lambda n: backbone.num_flat_features(torch.tensor(1.0)), ValueError, "x must have a batch dimension"),
    # --- the base class ----------------------------------------------------
    Bad("check_returnt", lambda n: backbone.check_returnt("all"), ValueError, "returnt must be one of"),
    Bad("forward/returnt", lambda n: n(torch.zeros(1, 4), returnt="logits"), ValueError, "returnt must be one of"),
    Bad("forward/x", lambda n: n(None), TypeError, "expects the input batch x to be a torch.Tensor"),
    Bad("init/keyword", lambda n: backbone.MammothBackbone(classes=3), TypeError, "got an unexpected keyword argument"),
    Bad("init/device", lambda n: backbone.MammothBackbone(device="bogus"), ValueError, "device must name a device"),
    Bad("init/device-type", lambda n: backbone.MammothBackbone(device=1.5), TypeError, "device must be a torch.device"),
    Bad("reset_classifier/negative", lambda n: n.reset_classifier(-1), ValueError, "num_classes must be 0 (no classifier) or more"),
    Bad("reset_classifier/float", lambda n: n.reset_classifier(2.0), TypeError, "num_classes must be an int"),
    Bad("intermediates/output_fmt", lambda n: n.forward_intermediates(torch.zeros(1, 4), output_fmt="NLC"), ValueError, "output_fmt must be one of"),
    Bad("intermediates/indices", lambda n: n.forward_intermediates(torch.zeros(1, 4), indices=3), ValueError, "indices as a last-n count must be from"),
    Bad("take_indices/last-n", lambda n: backbone.feature_take_indices(5, 0), ValueError, "indices as a last-n count must be from"),
    Bad("take_indices/index", lambda n: backbone.feature_take_indices(5, [5]), ValueError, "stage index must be from"),
    Bad("take_indices/empty", lambda n: backbone.feature_take_indices(5, []), ValueError, "indices must select at least one stage"),
    Bad("take_indices/type", lambda n: backbone.feature_take_indices(5, "1"), TypeError, "indices must be None, an int or a sequence of ints"),
    Bad("take_indices/item", lambda n: backbone.feature_take_indices(5, [1.0]), TypeError, "indices must be ints"),
    Bad("grow/shrink", lambda n: n.grow_classifier(1), ValueError, "(growing only), got"),
    Bad("grow/factored-optimizer-state", lambda n: n.grow_classifier(5, optimizer=n.optimizer), TypeError, "only state shaped like the parameter (or scalars) can be carried", adafactor_after_a_step),
    Bad("grow/type", lambda n: n.grow_classifier(3.0), TypeError, "num_classes must be an int"),
    Bad("grow/optimizer", lambda n: n.grow_classifier(4, optimizer="adam"), TypeError, "optimizer must be a torch.optim.Optimizer"),
    Bad("grow/non-linear-head", lambda n: n.grow_classifier(4), TypeError, "needs a torch.nn.Linear classifier or one with a grow_classes method", lambda: SequentialHead()),
    Bad("grow/parametrized-head", lambda n: n.grow_classifier(4), TypeError, "to be a parameter, got one computed", lambda: WeightNormHead()),
    Bad("grow/module", lambda n: backbone.grow_classifier("net", 3), TypeError, "expected a torch.nn.Module, got"),
    Bad("layout/module", lambda n: backbone.flat_layout(None), TypeError, "expected a torch.nn.Module, got"),
    Bad("carry/length", lambda n: backbone.carry_vector(torch.zeros(N + 1), backbone.flat_layout(n), backbone.flat_layout(n)), ValueError, "(the old layout), got shape"),
    Bad("carry/sparse", lambda n: backbone.carry_vector(torch.zeros(N).to_sparse(), backbone.flat_layout(n), backbone.flat_layout(n)), TypeError, "must be a dense (strided) tensor, got layout"),
    Bad("register/taken-with-spaces", lambda n: register(" RESNET18 "), ValueError, "is already registered"),
    Bad("carry/vector", lambda n: backbone.carry_vector([0.0] * N, backbone.flat_layout(n), backbone.flat_layout(n)), TypeError, "vector must be a torch.Tensor"),
    Bad("carry/layout", lambda n: backbone.carry_vector(torch.zeros(N), backbone.flat_layout(n), n), TypeError, "must be a FlatLayout"),
    Bad("carry/shrink", lambda n: backbone.carry_vector(torch.zeros(N), backbone.flat_layout(n), backbone.flat_layout(TinyNet(num_classes=1))), ValueError, "only growing along existing dimensions"),
    Bad("carry/removed", lambda n: backbone.carry_vector(torch.zeros(N), backbone.flat_layout(n), backbone.flat_layout(nn.Linear(3, 2))), ValueError, "so its values would be lost"),
    Bad("layout/view", lambda n: backbone.flat_layout(n).view(torch.zeros(N - 1), "classifier.bias"), ValueError, "(the old layout), got shape"),
    Bad("mask/logits", lambda n: backbone.mask_unseen(torch.zeros(3), 1), ValueError, "logits must be [B, C]"),
    Bad("mask/seen", lambda n: backbone.mask_unseen(torch.zeros(2, 3), 4), ValueError, "num_seen must be from 1 to the 3 classes"),
    Bad("mask/type", lambda n: backbone.mask_unseen(torch.zeros(2, 3), 1.5), TypeError, "num_seen must be an int"),
    Bad("device/assign", lambda n: setattr(n, "device", "gpu:zero"), ValueError, "device must name a device", lambda: MammothBackbone(device="meta")),
    Bad("device/assign-type", lambda n: setattr(n, "device", 2.5), TypeError, "device must be a torch.device", lambda: MammothBackbone(device="meta")),
    # --- reference backbones -----------------------------------------------
    Bad("MNISTMLP/size", lambda n: backbone.MNISTMLP(0, 10), ValueError, "must be a positive int, got"),
    Bad("MNISTMLP/bool", lambda n: backbone.MNISTMLP(784, True), ValueError, "must be a positive int, got"),
    Bad("ResNet/block", lambda n: backbone.ResNet(nn.Linear, [1, 1, 1, 1], 10), TypeError, "block must be the class BasicBlock or Bottleneck"),
    Bad("ResNet/layers-none", lambda n: backbone.ResNet(backbone.BasicBlock, None, 10), TypeError, "layers must be a list of 4 positive ints"),
    Bad("ResNet/layers-3", lambda n: backbone.ResNet(backbone.BasicBlock, [2, 2, 2], 10), ValueError, "layers must give the number of blocks of 4 stages"),
    Bad("ViT/multiple", lambda n: backbone.VisionTransformer(img_size=30, patch_size=4), ValueError, "img_size must be a multiple of patch_size"),
    Bad("ViT/heads", lambda n: backbone.VisionTransformer(img_size=32, patch_size=4, embed_dim=10, num_heads=3, depth=1), ValueError, "embed_dim must be divisible by num_heads"),
    Bad("ViT/image-size", lambda n: n(torch.zeros(1, 3, 24, 24)), ValueError, "expected images of 32x32 pixels", lambda: backbone.VisionTransformer(img_size=32, patch_size=8, embed_dim=8, depth=1, num_heads=2, num_classes=2)),
    Bad("from_timm/pretrained", lambda n: backbone.from_timm("resnet18", pretrained=True), ValueError, "would download weights"),
    Bad("from_torchvision/weights", lambda n: backbone.from_torchvision("resnet18", weights="DEFAULT"), ValueError, "would download weights"),
    Bad("from_timm/type", lambda n: backbone.from_timm(18), TypeError, "model must be a timm model name or a timm model"),
    Bad("from_torchvision/type", lambda n: backbone.from_torchvision(None), TypeError, "model must be a torchvision model name or a torchvision model"),
    Bad("from_timm/instance-kwargs", lambda n: backbone.from_timm(n, num_classes=3), TypeError, "keyword arguments build a model from a name"),
    Bad("from_timm/checkpoint", lambda n: backbone.from_timm(n, checkpoint=3), TypeError, "checkpoint must be a path to a saved state dict or a state dict"),
    Bad("resnet18/classes", lambda n: backbone.resnet18(0), ValueError, "must be a positive int, got"),
    # --- registry ----------------------------------------------------------
    Bad("prerelu/type", lambda n: n.set_return_prerelu("yes"), TypeError, "enable must be a bool", lambda: backbone.resnet18(3, num_filters=4)),
    Bad("mammoth/namespace", lambda n: mammoth.get_backbone({"backbone": "resnet18"}), TypeError, "args must be an argparse.Namespace"),
    Bad("mammoth/no-backbone", lambda n: mammoth.get_backbone(Namespace(num_classes=3)), ValueError, "args must name the backbone in args.backbone"),
    Bad("mammoth/missing", lambda n: mammoth.get_backbone(Namespace(backbone="resnet18")), ValueError, "args has no 'num_classes'"),
    Bad("mammoth/register", lambda n: mammoth.register_into(None), TypeError, "register_backbone must be callable"),
    Bad("register/empty", lambda n: register(""), ValueError, "a backbone name must be letters, digits"),
    Bad("register/space", lambda n: register("  "), ValueError, "a backbone name must be letters, digits"),
    Bad("register/inner-space", lambda n: register("my net"), ValueError, "a backbone name must be letters, digits"),
    Bad("register/type", lambda n: register(18), TypeError, "a backbone name must be a str, got"),
    Bad("register/shape-str", lambda n: register("x1", example_input_shape="abc"), TypeError, "example_input_shape must be a tuple of positive ints"),
    Bad("register/shape-int", lambda n: register("x1", example_input_shape=5), TypeError, "example_input_shape must be a tuple of positive ints"),
    Bad("register/shape-float", lambda n: register("x1", example_input_shape=(3.0, 2)), TypeError, "example_input_shape must be a tuple of positive ints"),
    Bad("register/shape-negative", lambda n: register("x1", example_input_shape=(3, -1)), ValueError, "example_input_shape must be a non-empty tuple"),
    Bad("register/shape-empty", lambda n: register("x1", example_input_shape=()), ValueError, "example_input_shape must be a non-empty tuple"),
    Bad("register/kwargs", lambda n: register("x1", example_kwargs=[("a", 1)]), TypeError, "example_kwargs must be a dict"),
    Bad("register/kwargs-keys", lambda n: register("x1", example_kwargs={1: 2}), TypeError, "example_kwargs must have str keys"),
    Bad("register/duplicate", lambda n: register("ResNet18"), ValueError, "is already registered"),
    Bad("register/override", lambda n: register("ResNet18", override="yes"), TypeError, "override must be a bool"),
    Bad("register/not-a-backbone", lambda n: backbone.register_backbone("x1")(nn.Linear), TypeError, "expects a MammothBackbone subclass or a factory"),
    Bad("get_backbone/unknown", lambda n: backbone.get_backbone("resnet81"), ValueError, "unknown backbone"),
    Bad("get_backbone/type", lambda n: backbone.get_backbone(None), TypeError, "a backbone name must be a str, got"),
    Bad("get_backbone/keyword", lambda n: backbone.get_backbone("resnet18", classes=3), TypeError, "got unexpected keyword arguments"),
    Bad("get_backbone/missing", lambda n: backbone.get_backbone("resnet18"), TypeError, "missing a required argument"),
    Bad("registered/unknown", lambda n: backbone.registered(""), ValueError, "unknown backbone"),
    Bad("unregister/unknown", lambda n: backbone.unregister_backbone("nope"), ValueError, "unknown backbone"),
    # --- checker -----------------------------------------------------------
    Bad("check/net", lambda n: backbone.check_backbone("resnet18", torch.zeros(1)), TypeError, "net must be a torch.nn.Module, got"),
    Bad("check/input", lambda n: backbone.check_backbone(n, [[0.0] * 4]), TypeError, "example_input must be a torch.Tensor, got"),
    Bad("check/batch", lambda n: backbone.check_backbone(n, torch.zeros(0, 4)), ValueError, "example_input must have a non-empty batch dimension"),
    Bad("check/unfit-input", lambda n: backbone.check_backbone(backbone.MNISTMLP(4, 2), torch.zeros(2, 3)), ValueError, "example_input must be a batch the backbone accepts"),
    Bad("forward/features", lambda n: n(torch.zeros(2, 3)), ValueError, "whose samples flatten to 4 features", lambda: backbone.MNISTMLP(4, 2)),
    Bad("forward/channels", lambda n: n(torch.zeros(2, 1, 8, 8)), ValueError, "expects images [B, 3, H, W]", lambda: backbone.resnet18(2, num_filters=2)),
    Bad("forward/dtype", lambda n: n(torch.zeros(2, 4, dtype=torch.float64)), TypeError, "expects inputs of its parameters' dtype", lambda: backbone.MNISTMLP(4, 2)),
    Bad("forward/integer", lambda n: n(torch.zeros(2, 4, dtype=torch.int64)), TypeError, "expects a floating-point input", lambda: backbone.MNISTMLP(4, 2)),
    Bad("check/rtol", lambda n: backbone.check_backbone(n, torch.zeros(1, 4), rtol=-1.0), ValueError, "must be a non-negative float, got"),
    Bad("check/atol", lambda n: backbone.check_backbone(n, torch.zeros(1, 4), atol="small"), TypeError, "must be a float, got"),
]
# fmt: on


def snapshot(net: nn.Module) -> dict[str, Any]:
    modules = list(net.modules())
    return {
        "modes": [m.training for m in modules],
        "slots": [(dict(m._parameters), dict(m._buffers)) for m in modules],
        "values": [
            (t, t.detach().clone())
            for m in modules
            for t in [*m._parameters.values(), *m._buffers.values()]
            if t is not None
            and t.layout == torch.strided
            and t.device.type != "meta"
            and not isinstance(t, nn.parameter.UninitializedTensorMixin)
        ],
        "grads": [(p, p.grad, None if p.grad is None else p.grad.detach().clone()) for p in net.parameters()],
        "registry": {name: registered(name) for name in list_backbones()},
        # A parameterless backbone reports the device it was given: the value a rejected assignment must keep.
        "device": net.device if isinstance(net, MammothBackbone) and not list(net.parameters()) else None,
    }


def assert_unchanged(net: nn.Module, before: dict[str, Any]) -> None:
    after = snapshot(net)
    assert after["modes"] == before["modes"]
    for (params0, buffers0), (params1, buffers1) in zip(before["slots"], after["slots"], strict=True):
        assert params0.keys() == params1.keys() and all(params0[k] is params1[k] for k in params0)
        assert buffers0.keys() == buffers1.keys() and all(buffers0[k] is buffers1[k] for k in buffers0)
    for t, value in before["values"]:
        assert torch.equal(t.detach(), value), "a parameter or buffer changed"
    for p, grad, value in before["grads"]:
        assert p.grad is grad, "a .grad object was created, replaced or removed"
        if grad is not None and grad.layout == torch.strided:
            assert torch.equal(grad, value), "a gradient's values changed"
    assert after["registry"] == before["registry"]
    assert after["device"] == before["device"]


@pytest.mark.parametrize("bad", MATRIX, ids=[bad.id for bad in MATRIX])
def test_bad_input_raises_the_documented_error_and_changes_nothing(bad: Bad) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sparse invariants, deprecated weight_norm
        net = bad.build()
        before = snapshot(net)
        with pytest.raises(bad.error) as info:
            bad.call(net)
    assert bad.message in str(info.value)
    assert type(info.value) is bad.error  # not a subclass with another meaning
    assert_unchanged(net, before)


def test_the_matrix_ids_are_unique() -> None:
    assert len({bad.id for bad in MATRIX}) == len(MATRIX)


ENTRY = re.compile(r"^``(?P<message>[^`]+)``\s+\((?P<error>TypeError|ValueError)\)$")


def documented() -> set[tuple[str, str]]:
    entries = set()
    for line in ERRORS_PAGE.read_text().splitlines():
        match = ENTRY.match(line)
        if match:
            entries.add((match["error"], match["message"]))
    return entries


def test_the_errors_page_lists_exactly_the_matrix() -> None:
    tested = {(bad.error.__name__, bad.message) for bad in MATRIX}
    page = documented()
    assert page, "no entries found on docs/errors.rst"
    assert sorted(tested - page) == [], "errors tested here but missing from docs/errors.rst"
    assert sorted(page - tested) == [], "errors on docs/errors.rst that no test raises"


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")
@pytest.mark.parametrize("op", ["set_params", "set_grads", "add_grads"])
def test_a_nested_vector_is_a_type_error_and_changes_nothing(op: str) -> None:
    net = nn.Linear(2, 1)
    net.weight.grad = torch.ones(1, 2)
    before = [t.clone() for t in (net.weight, net.bias, net.weight.grad)]
    nested = torch.nested.nested_tensor([torch.randn(2), torch.randn(1)])
    with pytest.raises(TypeError, match=r"must be a dense \(strided\) tensor, got a nested tensor"):
        getattr(backbone, op)(net, nested)
    assert all(torch.equal(a, b) for a, b in zip((net.weight, net.bias, net.weight.grad), before, strict=True))
    assert net.bias.grad is None


def test_numpy_scalars_are_real_numbers_for_alpha() -> None:
    np = pytest.importorskip("numpy")
    net = nn.Linear(2, 1)
    backbone.add_grads(net, torch.ones(3), alpha=np.float32(0.5))
    assert torch.equal(backbone.get_grads(net), torch.full((3,), 0.5))
    counts = nn.Module()
    counts.p = nn.Parameter(torch.zeros(2, dtype=torch.int64), requires_grad=False)
    counts.p.grad = torch.zeros(2, dtype=torch.int64)
    backbone.add_grads(counts, torch.ones(2, dtype=torch.int64), alpha=np.int64(3))  # integral: allowed into ints
    assert counts.p.grad.tolist() == [3, 3]
    with pytest.raises(TypeError, match="alpha must be a real number, got bool"):
        backbone.add_grads(net, torch.ones(3), alpha=np.bool_(True))
