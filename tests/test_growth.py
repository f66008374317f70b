"""Class-incremental growth: old outputs kept bit for bit, optimizers and flat vectors carried across."""

from __future__ import annotations

import copy

import pytest
import torch
from nets import TinyNet
from torch import nn

import backbone
from backbone import MNISTMLP, carry_vector, flat_layout, grow_classifier, mask_unseen, resnet18


def small_vit() -> backbone.VisionTransformer:
    return backbone.VisionTransformer(img_size=16, patch_size=4, num_classes=3, embed_dim=8, depth=2, num_heads=2)


NETS = {
    "mnistmlp": (lambda: MNISTMLP(6, 3, hidden_size=5), (4, 6)),
    "resnet18": (lambda: resnet18(3, num_filters=4), (4, 3, 8, 8)),
    "vit": (small_vit, (4, 3, 16, 16)),
    "tinynet": (lambda: TinyNet(num_classes=3), (4, 4)),
}


@pytest.mark.parametrize("name", NETS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_growth_keeps_old_outputs_bit_identical(name: str, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    make, shape = NETS[name]
    net = make().to(dtype).eval()
    x = torch.randn(shape, dtype=dtype)
    with torch.no_grad():
        logits, features = net(x, returnt="both")
    params = list(net.parameters())
    old_weight = net.get_classifier().weight.detach().clone()
    old_bias = net.get_classifier().bias.detach().clone()
    net.grow_classifier(7)
    with torch.no_grad():
        grown, grown_features = net(x, returnt="both")
    assert grown.shape == (4, 7) and net.num_classes == 7
    assert torch.equal(grown_features, features)
    # The old rows and biases are the same bits; the matrix multiply may sum in
    # another order for another width, so the old logits agree to a few ulps.
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(grown[:, :3], logits, rtol=4 * eps, atol=4 * eps * logits.abs().max().item())
    classifier = net.get_classifier()
    assert torch.equal(classifier.weight[:3], old_weight) and torch.equal(classifier.bias[:3], old_bias)
    assert all(a is b for a, b in zip(params, net.parameters(), strict=True))  # the same Parameter objects
    assert isinstance(classifier, nn.Linear) and classifier.out_features == 7
    assert classifier.weight.dtype == dtype and classifier.bias.dtype == dtype


def test_new_units_are_initialised_as_the_backbone_initialises_its_classifier() -> None:
    torch.manual_seed(0)
    mlp = MNISTMLP(6, 3, hidden_size=50)
    mlp.grow_classifier(400)
    weight, bias = mlp.classifier.weight[3:], mlp.classifier.bias[3:]
    bound = (6 / (50 + 400)) ** 0.5  # Glorot-uniform of the grown layer
    assert torch.equal(bias, torch.zeros(397)) and weight.abs().max() <= bound
    assert weight.std() > 0.8 * bound / 3**0.5
    vit = small_vit()
    vit.grow_classifier(50)
    assert torch.equal(vit.head.bias[3:], torch.zeros(47)) and vit.head.weight[3:].abs().max() <= 0.04
    tiny = TinyNet(num_classes=3, hidden=100)  # no init_classifier: torch's default for nn.Linear
    tiny.grow_classifier(200)
    assert tiny.classifier.weight[3:].abs().max() <= 100**-0.5 and tiny.classifier.bias[3:].abs().max() <= 100**-0.5


def test_gradients_grow_with_zeros_and_equal_classes_change_nothing() -> None:
    net = MNISTMLP(6, 3, hidden_size=5)
    net(torch.randn(2, 6)).sum().backward()
    grad = net.classifier.weight.grad.clone()
    net.grow_classifier(5)
    assert torch.equal(net.classifier.weight.grad[:3], grad)
    assert torch.equal(net.classifier.weight.grad[3:], torch.zeros(2, 5))
    weight = net.classifier.weight.detach().clone()
    net.grow_classifier(5)
    assert torch.equal(net.classifier.weight, weight)


def train(net: nn.Module, optimizer: torch.optim.Optimizer, steps: int, classes: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        optimizer.zero_grad()
        x, y = torch.randn(8, 6, generator=generator), torch.randint(0, classes, (8,), generator=generator)
        nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()


OPTIMIZERS = {
    "adam": lambda params: torch.optim.Adam(params, lr=0.01),
    "adamw": lambda params: torch.optim.AdamW(params, lr=0.01, weight_decay=0.1),
    "adam-amsgrad": lambda params: torch.optim.Adam(params, lr=0.01, amsgrad=True),
    "sgd-momentum": lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9),
}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_a_step_after_growth_equals_the_reference_step(name: str) -> None:
    torch.manual_seed(0)
    net = MNISTMLP(6, 3, hidden_size=5)
    optimizer = OPTIMIZERS[name](net.parameters())
    train(net, optimizer, steps=3, classes=3, seed=1)
    # The reference: the same model and optimizer, not grown.
    reference = copy.deepcopy(net)
    reference_optimizer = OPTIMIZERS[name](reference.parameters())
    reference_optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))  # load_state_dict shares tensors
    old = flat_layout(net)
    net.grow_classifier(5, optimizer=optimizer)
    new = flat_layout(net)
    # One more step with the same gradient on the old units, any on the new.
    gradient = torch.randn(old.numel, generator=torch.Generator().manual_seed(2))
    fresh = torch.randn(new.numel, generator=torch.Generator().manual_seed(3))
    grown_gradient = carry_vector(gradient, old, new) + torch.where(
        carry_vector(torch.ones(old.numel), old, new) == 0, fresh, torch.zeros(new.numel)
    )
    before_new_rows = net.classifier.weight[3:].detach().clone()
    reference.set_grads(gradient)
    net.set_grads(grown_gradient)
    reference_optimizer.step()
    optimizer.step()
    # The old units step exactly as without the growth.
    carried = carry_vector(reference.get_params().detach(), old, new)
    kept = carry_vector(torch.ones(old.numel), old, new) == 1
    assert torch.equal(net.get_params().detach()[kept], carried[kept])
    # The new units start from zero state, at the optimizer's step count.
    g = new.view(grown_gradient, "classifier.weight")[3:]
    if name.startswith("adam"):
        step = 4
        lr, (b1, b2), eps = 0.01, (0.9, 0.999), 1e-8
        p = before_new_rows * (1 - lr * 0.1) if name == "adamw" else before_new_rows
        m, v = (1 - b1) * g, (1 - b2) * g**2
        expected = p - lr / (1 - b1**step) * m / (v.sqrt() / (1 - b2**step) ** 0.5 + eps)
    else:
        expected = before_new_rows - 0.1 * g  # a zero momentum buffer is a fresh one
    torch.testing.assert_close(net.classifier.weight[3:].detach(), expected, rtol=1e-6, atol=1e-7)


def test_flat_vectors_carried_across_growth_equal_the_grown_models_on_kept_entries() -> None:
    torch.manual_seed(0)
    net = MNISTMLP(6, 3, hidden_size=5)
    net(torch.randn(4, 6)).square().sum().backward()
    old = flat_layout(net)
    anchor, reference_gradient = net.get_params().detach().clone(), net.get_grads()
    importance = torch.rand(old.numel)
    net.grow_classifier(6)
    new = flat_layout(net)
    kept = carry_vector(torch.ones(old.numel), old, new) == 1
    assert int(kept.sum()) == old.numel and new.numel == old.numel + 3 * 5 + 3
    assert torch.equal(carry_vector(anchor, old, new)[kept], net.get_params().detach()[kept])
    assert torch.equal(carry_vector(reference_gradient, old, new)[kept], net.get_grads()[kept])
    carried = carry_vector(importance, old, new, fill=0.0)
    assert torch.equal(carried[kept], importance) and not carried[~kept].any()
    # The EWC penalty with the carried anchor and importance is that of before: new units are free.
    penalty = (carried * (net.get_params() - carry_vector(anchor, old, new)) ** 2).sum()
    assert penalty.item() == 0.0


def test_the_layout_describes_named_parameters() -> None:
    net = resnet18(3, num_filters=4)
    layout = flat_layout(net)
    offset = 0
    for entry, (name, p) in zip(layout, net.named_parameters(), strict=True):
        assert (entry.name, entry.offset, entry.shape, entry.dtype) == (name, offset, tuple(p.shape), p.dtype)
        offset += p.numel()
    assert layout.numel == offset == net.get_params().numel()
    vector = net.get_params().detach()
    assert torch.equal(layout.view(vector, "classifier.weight"), net.classifier.weight)
    assert torch.equal(vector[layout.span("layer2")], backbone.get_params(net.layer2).detach())
    assert "classifier.bias" in layout and "nope" not in layout and len(layout) == len(list(net.parameters()))


def test_spans_follow_named_parameters_and_unknown_names_are_key_errors() -> None:
    net = nn.Module()
    net.a = nn.Linear(2, 2)
    net.b = nn.Linear(2, 2)
    net.c = nn.Module()
    net.c.first = nn.Parameter(torch.zeros(1))
    net.c.tied = net.a.weight  # named under 'a', where it comes first
    net.d = nn.Parameter(torch.zeros(1))  # the root's own parameters come first
    layout = flat_layout(net)
    assert [e.name for e in layout] == ["d", "a.weight", "a.bias", "b.weight", "b.bias", "c.first"]
    assert layout.span("a") == slice(1, 7) and layout.span("c") == slice(13, 14) and layout.span("d") == slice(0, 1)
    with pytest.raises(KeyError, match="no parameter under 'zzz'"):
        layout.span("zzz")
    with pytest.raises(KeyError, match="no parameter named 'zzz'"):
        layout["zzz"]


def test_carry_refuses_what_would_lose_values() -> None:
    small, big = nn.Linear(3, 2), nn.Linear(3, 4)
    old, new = flat_layout(small), flat_layout(big)
    vector = torch.arange(8.0)
    with pytest.raises(ValueError, match="went from shape \\(4, 3\\) to \\(2, 3\\)"):
        carry_vector(torch.zeros(16), new, old)
    other = nn.Module()
    other.weight = nn.Parameter(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="has no parameter 'bias'"):
        carry_vector(vector, old, flat_layout(other))
    dropped = carry_vector(vector, old, flat_layout(other), drop_removed=True)
    assert torch.equal(dropped[:6], vector[:6]) and not dropped[6:].any()
    assert torch.equal(carry_vector(vector, old, new, fill=-1.0)[12:], torch.tensor([6.0, 7.0, -1.0, -1.0]))


def test_mask_unseen() -> None:
    logits = torch.tensor([[1.0, 5.0, 9.0, 0.0]], requires_grad=True)
    masked = mask_unseen(logits, 2)
    assert masked.argmax(1).item() == 1
    loss = nn.functional.cross_entropy(masked, torch.tensor([0]))
    loss.backward()
    assert logits.grad is not None and torch.equal(logits.grad[0, 2:], torch.zeros(2))
    assert torch.equal(mask_unseen(logits, 4), logits)


def test_the_function_and_the_method_are_the_same_growth() -> None:
    a, b = MNISTMLP(6, 3, hidden_size=5), MNISTMLP(6, 3, hidden_size=5)
    b.load_state_dict(a.state_dict())
    optimizers = [torch.optim.Adam(net.parameters(), lr=0.01) for net in (a, b)]
    for net, optimizer in zip((a, b), optimizers, strict=True):
        train(net, optimizer, steps=2, classes=3, seed=1)
    torch.manual_seed(1)
    a.grow_classifier(4, optimizer=optimizers[0])
    torch.manual_seed(1)
    grow_classifier(b, 4, optimizer=optimizers[1])
    assert a.num_classes == b.num_classes == 4
    assert torch.equal(a.get_params(), b.get_params())
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        state_a, state_b = optimizers[0].state[p], optimizers[1].state[q]
        assert state_a.keys() == state_b.keys()
        assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert optimizers[0].state[a.classifier.weight]["exp_avg"].shape == (4, 5)


def test_an_optimizer_with_factored_state_is_refused_before_anything_changes() -> None:
    torch.manual_seed(0)
    net = MNISTMLP(6, 3, hidden_size=5)
    optimizer = torch.optim.Adafactor(net.parameters(), lr=0.01)
    train(net, optimizer, steps=2, classes=3, seed=1)
    weight = net.classifier.weight
    before = (weight.detach().clone(), {k: v.clone() for k, v in optimizer.state[weight].items()})
    with pytest.raises(TypeError, match=r"Adafactor keeps state 'row_var' of shape \(3, 1\)"):
        net.grow_classifier(5, optimizer=optimizer)
    assert net.classifier.out_features == 3 and torch.equal(weight, before[0])
    assert all(torch.equal(optimizer.state[weight][k], v) for k, v in before[1].items())
    net.grow_classifier(5)  # without the optimizer, the growth itself works
    assert net.classifier.weight.shape == (5, 5)


# --- which classifier grows, and how the new units start -------------------------------------


class HeadNamedFc(nn.Module):
    """Not a backbone: its classifier is found through get_classifier alone."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 3)
        self.fc = nn.Linear(3, 2)

    def get_classifier(self) -> nn.Module:
        return self.fc


class PlainWithClassifier(nn.Module):
    """No get_classifier and no init_classifier: the classifier attribute, torch's default init."""

    def __init__(self, bias: bool = True) -> None:
        super().__init__()
        self.classifier = nn.Linear(3, 2, bias=bias)


def test_the_classifier_is_what_get_classifier_returns() -> None:
    net = HeadNamedFc()
    weight = net.fc.weight
    grow_classifier(net, 5)
    assert net.fc.out_features == 5 and net.fc.weight is weight and net.body.out_features == 3


@pytest.mark.parametrize("bias", [True, False])
def test_a_plain_module_grows_its_classifier_with_torchs_default_init(bias: bool) -> None:
    net = PlainWithClassifier(bias)
    old = net.classifier.weight.detach().clone()
    torch.manual_seed(3)
    grow_classifier(net, 5)
    after_growth = torch.rand(1)
    torch.manual_seed(3)
    fresh = nn.Linear(3, 5, bias=bias)  # what a freshly made classifier of the grown size would hold
    assert torch.equal(torch.rand(1), after_growth)  # and the same random numbers drawn: seeded runs repeat
    assert torch.equal(net.classifier.weight[:2], old)
    assert torch.equal(net.classifier.weight[2:], fresh.weight[2:])
    assert (net.classifier.bias is None) == (not bias)
    if bias:
        assert torch.equal(net.classifier.bias[2:], fresh.bias[2:])


def test_new_units_are_initialised_by_the_backbones_init_classifier_without_a_bias() -> None:
    net = TinyNet(num_classes=2)
    net.classifier = nn.Linear(3, 2, bias=False)
    torch.manual_seed(4)
    grow_classifier(net, 6)
    torch.manual_seed(4)
    fresh = nn.Linear(3, 6, bias=False)
    net.init_classifier(fresh)
    assert net.classifier.bias is None
    assert torch.equal(net.classifier.weight[2:], fresh.weight[2:])


def test_a_classifier_on_the_meta_device_grows_there() -> None:
    net = PlainWithClassifier().to("meta")
    grow_classifier(net, 4)
    assert net.classifier.weight.device.type == "meta" and net.classifier.weight.shape == (4, 3)
    assert net.classifier.bias.device.type == "meta"


class Abstract(nn.Module):
    def get_classifier(self) -> nn.Module:
        raise NotImplementedError


def conv_headed() -> nn.Module:
    net = TinyNet()
    net.classifier = nn.Conv2d(3, 2, 1)
    return net


@pytest.mark.parametrize(
    ("build", "got"),
    [(Abstract, "NoneType"), (lambda: nn.Sequential(nn.Linear(2, 2)), "NoneType"), (conv_headed, "Conv2d")],
)
def test_a_missing_or_non_linear_classifier_is_named_in_the_refusal(build, got: str) -> None:  # type: ignore[no-untyped-def]
    message = (
        f"grow_classifier needs a torch.nn.Linear classifier or one with a grow_classes method, got {got}; "
        "grow a custom head yourself, or replace it with reset_classifier"
    )
    with pytest.raises(TypeError) as info:
        grow_classifier(build(), 4)
    assert str(info.value) == message


def test_a_parametrized_classifier_is_refused_with_the_whole_reason() -> None:
    net = TinyNet()
    nn.utils.parametrizations.weight_norm(net.classifier)
    with pytest.raises(TypeError) as info:
        grow_classifier(net, 4)
    assert str(info.value) == (
        "grow_classifier needs the classifier's weight to be a parameter, got one computed by a "
        "parametrization or hook; grow the tensors it is computed from yourself"
    )


def test_a_non_optimizer_is_named() -> None:
    with pytest.raises(TypeError) as info:
        grow_classifier(TinyNet(), 4, optimizer="adam")  # type: ignore[arg-type]
    assert str(info.value) == "optimizer must be a torch.optim.Optimizer, got str"


@pytest.mark.parametrize(("name", "shape"), [("weight", (3,)), ("bias", (1,))])
def test_state_of_another_shape_is_refused_naming_the_parameter(name: str, shape: tuple[int, ...]) -> None:
    net = TinyNet()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    param = getattr(net.classifier, name)
    optimizer.state[param]["statistic"] = torch.zeros(shape)  # one value per input, say: not growable
    before = param.detach().clone()
    with pytest.raises(
        TypeError, match=rf"keeps state 'statistic' of shape \({shape[0]},\) for the classifier's {name} "
    ):
        grow_classifier(net, 4, optimizer=optimizer)
    assert torch.equal(param, before) and net.num_classes == 2


# --- mask_unseen ----------------------------------------------------------------------------


def test_mask_unseen_keeps_one_column() -> None:
    logits = torch.tensor([[1.0, 2.0, 3.0]])
    assert torch.equal(mask_unseen(logits, 1), torch.tensor([[1.0, -torch.inf, -torch.inf]]))


def test_mask_unseen_refuses_a_non_tensor_by_type() -> None:
    with pytest.raises(TypeError) as info:
        mask_unseen([[1.0, 2.0]], 1)  # type: ignore[arg-type]
    assert str(info.value) == "logits must be a torch.Tensor, got list"


def test_mask_unseen_keeps_the_logits_device() -> None:
    masked = mask_unseen(torch.zeros(2, 3, device="meta"), 2)
    assert masked.device.type == "meta" and masked.shape == (2, 3)
