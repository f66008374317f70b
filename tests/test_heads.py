"""Every head type grows with the promises nn.Linear has: one parametrised suite, plus each head's own meaning."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from backbone import (
    MNISTMLP,
    CosineClassifier,
    MultiHeadClassifier,
    SplitCosineClassifier,
    carry_vector,
    check_backbone,
    flat_layout,
    get_params,
    grow_classifier,
    grow_to_fit,
    vit_tiny_patch4_32,
)

HEADS: dict[str, Callable[[int, int], nn.Module]] = {
    "linear": lambda d, c: nn.Linear(d, c),
    "cosine": lambda d, c: CosineClassifier(d, c, scale=4.0),
    "split-cosine": lambda d, c: SplitCosineClassifier(d, [c], scale=4.0),
    "multi-head": lambda d, c: MultiHeadClassifier(d, [c]),
}
KINDS = list(HEADS)


def make(kind: str, classes: int = 3, seed: int = 0) -> MNISTMLP:
    torch.manual_seed(seed)
    net = MNISTMLP(6, classes, hidden_size=5)
    net.classifier = HEADS[kind](5, classes)
    return net.double()


def batch(n: int = 7) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


def old_params(net: nn.Module) -> dict[str, Tensor]:
    return {n: p.detach().clone() for n, p in net.named_parameters()}


def assert_old_units_kept(before: dict[str, Tensor], net: nn.Module) -> None:
    """Every parameter from before is still there, its old entries the same bits (rows added at the end only)."""
    now = dict(net.named_parameters())
    for name, value in before.items():
        assert name in now, name
        block = tuple(slice(0, s) for s in value.shape)
        assert torch.equal(now[name].detach()[block], value), name


# --- the shared promises -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_growth_keeps_old_logits_and_old_parameters_bit_for_bit(kind: str) -> None:
    net = make(kind)
    x, _ = batch()
    before_logits = net(x)
    before = old_params(net)
    objects = {n: p for n, p in net.named_parameters()}
    grow_classifier(net, 5)
    grow_classifier(net, 8)
    assert net.num_classes == 8 and net(x).shape == (7, 8)
    torch.testing.assert_close(net(x)[:, :3], before_logits, rtol=0, atol=1e-12)
    assert_old_units_kept(before, net)
    assert all(dict(net.named_parameters())[n] is p for n, p in objects.items())  # the same Parameter objects


@pytest.mark.parametrize("kind", KINDS)
def test_growing_to_the_same_size_changes_nothing(kind: str) -> None:
    net = make(kind)
    state = copy.deepcopy(net.state_dict())
    grow_classifier(net, 3)
    assert list(net.state_dict()) == list(state)
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("optim", ["adam", "sgd-momentum"])
def test_old_units_step_after_growth_exactly_as_without_it(kind: str, optim: str) -> None:
    def optimizer(net: nn.Module) -> torch.optim.Optimizer:
        if optim == "adam":
            return torch.optim.Adam(net.parameters(), lr=0.05, foreach=False)
        return torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, foreach=False)

    grown, plain = make(kind), make(kind)
    opt_grown, opt_plain = optimizer(grown), optimizer(plain)
    x, y = batch()
    for net, opt in ((grown, opt_grown), (plain, opt_plain)):
        F.cross_entropy(net(x), y).backward()
        opt.step()
        opt.zero_grad()
    grow_classifier(grown, 6, optimizer=opt_grown)
    for _ in range(2):
        for net, opt in ((grown, opt_grown), (plain, opt_plain)):
            F.cross_entropy(net(x)[:, :3], y).backward()  # a loss over the old classes only
            opt.step()
            opt.zero_grad()
    assert_old_units_kept(old_params(plain), grown)
    held = {id(p) for group in opt_grown.param_groups for p in group["params"]}
    assert all(id(p) in held for p in grown.parameters())


@pytest.mark.parametrize("kind", KINDS)
def test_new_units_are_trained_by_the_carried_optimizer(kind: str) -> None:
    net = make(kind)
    opt = torch.optim.SGD(net.parameters(), lr=0.5, momentum=0.9)
    x, y = batch()
    F.cross_entropy(net(x), y).backward()
    opt.step()
    opt.zero_grad()
    shapes = {n: p.shape for n, p in net.named_parameters()}
    grow_classifier(net, 5, optimizer=opt)
    new_units = {}  # the entries of the new classes: new rows of a grown parameter, or a new group's parameters
    for name, p in net.named_parameters():
        if name not in shapes:
            new_units[name] = p.detach().clone()
        elif p.shape != shapes[name]:
            new_units[name] = p.detach()[shapes[name][0] :].clone()
    assert new_units
    F.cross_entropy(net(x), y + 2).backward()  # classes 2..4: the new units matter
    opt.step()
    now = dict(net.named_parameters())
    for name, value in new_units.items():
        rows = now[name].detach()[-value.shape[0] :] if name in shapes else now[name].detach()
        assert not torch.equal(rows, value), name


@pytest.mark.parametrize("kind", KINDS)
def test_optimizer_state_of_old_units_is_kept_and_new_units_start_at_zero(kind: str) -> None:
    net = make(kind)
    body = [p for n, p in net.named_parameters() if not n.startswith("classifier.")]
    opt = torch.optim.Adam([{"params": body}, {"params": net.classifier.parameters(), "lr": 0.01}], lr=0.1)
    x, y = batch()
    F.cross_entropy(net(x), y).backward()
    opt.step()
    state = {n: {k: v.clone() for k, v in opt.state[p].items()} for n, p in net.named_parameters()}
    groups = len(opt.param_groups)
    grow_classifier(net, 5, optimizer=opt)
    for name, param in net.named_parameters():
        if name in state:
            for key, value in state[name].items():
                now = opt.state[param][key]
                block = tuple(slice(0, s) for s in value.shape)
                assert torch.equal(now[block], value), (name, key)
                if now.dim() and now.shape != value.shape:
                    assert torch.equal(now[value.shape[0] :], torch.zeros_like(now[value.shape[0] :]))
        else:
            assert param not in opt.state  # a new group's parameters: no state yet, it starts at zero
    new_groups = len(opt.param_groups) - groups
    assert new_groups == (1 if kind in ("split-cosine", "multi-head") else 0)
    if new_groups:
        # The new group's parameters train as the head's did, not with the optimizer's defaults.
        assert opt.param_groups[-1]["lr"] == 0.01 and opt.param_groups[-1]["betas"] == opt.param_groups[0]["betas"]


@pytest.mark.parametrize("kind", KINDS)
def test_flat_vectors_carry_across_growth(kind: str) -> None:
    net = make(kind)
    old = flat_layout(net)
    anchor = get_params(net).detach().clone()
    grow_classifier(net, 5)
    new = flat_layout(net)
    carried = carry_vector(anchor, old, new, fill=-7.0)
    now = get_params(net).detach()
    assert carried.shape == now.shape
    kept = torch.zeros_like(now, dtype=torch.bool)
    for entry in old:
        target = new[entry.name]
        block = tuple(slice(0, s) for s in entry.shape)
        mask = torch.zeros(target.shape, dtype=torch.bool)
        mask[block] = True
        kept[target.offset : target.stop] = mask.flatten()
    assert torch.equal(carried[kept], now[kept])  # the old parameters' values, where the grown model has them
    assert torch.equal(carried[~kept], torch.full_like(carried[~kept], -7.0))
    assert int((~kept).sum()) > 0


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda net, opt: grow_classifier(net, 2), ValueError),
        (lambda net, opt: grow_classifier(net, "5"), TypeError),
        (lambda net, opt: grow_classifier(net, True), TypeError),
        (lambda net, opt: grow_classifier(net, 5, optimizer="adam"), TypeError),
    ],
)
def test_a_rejected_growth_changes_nothing(kind: str, call: Callable[..., None], error: type[Exception]) -> None:
    net = make(kind)
    opt = torch.optim.Adam(net.parameters())
    state = copy.deepcopy(net.state_dict())
    with pytest.raises(error):
        call(net, opt)
    assert list(net.state_dict()) == list(state)
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())
    assert len(opt.param_groups) == 1


@pytest.mark.parametrize("kind", ["split-cosine", "multi-head"])
def test_an_optimizer_that_does_not_train_the_head_is_refused_before_the_growth(kind: str) -> None:
    net = make(kind)
    opt = torch.optim.SGD(net.fc1.parameters(), lr=0.1)
    state = copy.deepcopy(net.state_dict())
    with pytest.raises(ValueError, match="holds none of the head's parameters"):
        grow_classifier(net, 5, optimizer=opt)
    assert list(net.state_dict()) == list(state)
    assert len(opt.param_groups) == 1


@pytest.mark.parametrize("kind", KINDS)
def test_a_checkpoint_saved_after_growth_loads_into_a_fresh_model_after_grow_to_fit(kind: str) -> None:
    trained = make(kind)
    grow_classifier(trained, 5)
    grow_classifier(trained, 9)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.1)
    saved = copy.deepcopy(trained.state_dict())
    fresh = make(kind, seed=3)
    assert grow_to_fit(fresh, saved) == 9
    fresh.load_state_dict(saved)  # strict
    x, _ = batch()
    assert torch.equal(fresh(x), trained(x))
    if hasattr(fresh.classifier, "group_sizes"):
        assert fresh.classifier.group_sizes == [3, 2, 4]


@pytest.mark.parametrize("kind", KINDS)
def test_grow_to_fit_refuses_a_smaller_or_unrelated_checkpoint_and_changes_nothing(kind: str) -> None:
    net = make(kind, classes=3)
    grow_classifier(net, 5)
    smaller = make(kind, classes=3).state_dict()
    state = copy.deepcopy(net.state_dict())
    with pytest.raises(ValueError):
        grow_to_fit(net, smaller)
    with pytest.raises(ValueError):
        grow_to_fit(net, {"unrelated.weight": torch.zeros(2, 2)})
    with pytest.raises(TypeError):
        grow_to_fit(net, [("classifier.weight", torch.zeros(2, 2))])  # type: ignore[arg-type]
    assert list(net.state_dict()) == list(state)
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())


@pytest.mark.parametrize("kind", KINDS)
def test_the_checker_passes_a_backbone_with_each_head(kind: str) -> None:
    net = make(kind).float()
    results = check_backbone(net, torch.randn(4, 6))
    assert [(r.rule, r.detail) for r in results if r.status == "fail"] == []


@pytest.mark.parametrize("kind", KINDS)
def test_a_vit_takes_each_head_and_grows_it(kind: str) -> None:
    torch.manual_seed(0)
    net = vit_tiny_patch4_32(4).eval()
    net.classifier = HEADS[kind](192, 4)
    x = torch.randn(2, 3, 32, 32)
    before = net(x)
    net.grow_classifier(6)
    assert net.num_classes == 6 and net.get_classifier() is net.head
    torch.testing.assert_close(net(x)[:, :4], before, rtol=0, atol=1e-5)


# --- what each head computes ---------------------------------------------------------------------------------------


def test_the_cosine_head_is_scale_times_the_cosine_similarity() -> None:
    head = CosineClassifier(5, 3, scale=2.5).double()
    x = torch.randn(4, 5, dtype=torch.float64)
    w = head.weight
    want = torch.stack([torch.stack([2.5 * (xi @ wc) / (xi.norm() * wc.norm()) for wc in w]) for xi in x])
    torch.testing.assert_close(head(x), want, rtol=1e-12, atol=1e-12)
    assert isinstance(head.scale, nn.Parameter) and head.scale.shape == (1,)
    fixed = CosineClassifier(5, 3, learn_scale=False)
    assert [n for n, _ in fixed.named_parameters()] == ["weight"] and "scale" in fixed.state_dict()
    bound = 1 / math.sqrt(5)
    assert bool(fixed.weight.abs().max() <= bound)


def test_the_split_cosine_head_equals_one_cosine_head_over_the_stacked_groups() -> None:
    head = SplitCosineClassifier(5, [2, 3], scale=3.0).double()
    whole = CosineClassifier(5, 5, scale=3.0).double()
    with torch.no_grad():
        whole.weight.copy_(torch.cat(list(head.weights)))
    x = torch.randn(4, 5, dtype=torch.float64)
    torch.testing.assert_close(head(x), whole(x), rtol=0, atol=1e-14)
    assert head.num_old == 2 and head.offsets == [0, 2]
    head.grow_classes(9)
    assert head.group_sizes == [2, 3, 4] and head.num_old == 5
    assert [n for n, _ in head.named_parameters()] == ["scale", "weights.0", "weights.1", "weights.2"] or [
        n for n, _ in head.named_parameters()
    ] == ["weights.0", "weights.1", "weights.2", "scale"]


def test_the_multi_head_concatenates_linear_heads_in_class_order_and_masks_one_task() -> None:
    head = MultiHeadClassifier(5, [2, 3]).double()
    x = torch.randn(4, 5, dtype=torch.float64)
    want = torch.cat([x @ h.weight.T + h.bias for h in head.heads], dim=1)
    torch.testing.assert_close(head(x), want, rtol=0, atol=1e-14)
    logits = head(x)
    masked = head.mask(logits, 1)
    assert torch.equal(masked[:, 2:], logits[:, 2:]) and bool((masked[:, :2] == float("-inf")).all())
    per_sample = head.mask(logits, torch.tensor([0, 1, 1, 0]))
    assert torch.equal(per_sample[0, :2], logits[0, :2]) and bool((per_sample[0, 2:] == float("-inf")).all())
    assert torch.equal(per_sample[1, 2:], logits[1, 2:]) and bool((per_sample[1, :2] == float("-inf")).all())
    assert per_sample.argmax(1).tolist()[0] in (0, 1)
    for bad, error in [
        (2, ValueError),
        (-1, ValueError),
        (torch.tensor([0.0, 1, 1, 0]), TypeError),
        (torch.tensor([0, 1]), ValueError),
        ("0", TypeError),
    ]:
        with pytest.raises(error):
            head.mask(logits, bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"logits must be \[B, 5\]"):
        head.mask(logits[:, :4], 0)


def test_a_new_task_head_starts_as_the_backbone_starts_its_classifier() -> None:
    net = MNISTMLP(6, 3, hidden_size=5)
    net.classifier = MultiHeadClassifier(5, [3], bias=True)
    net.grow_classifier(5)
    new = net.classifier.heads[1]
    # MNISTMLP's init_classifier: Glorot-uniform weights and zero biases.
    assert torch.equal(new.bias, torch.zeros(2))
    assert bool(new.weight.abs().max() <= math.sqrt(6 / (5 + 2)))


@pytest.mark.parametrize(
    ("make_head", "match"),
    [
        (lambda: CosineClassifier(0, 3), "in_features"),
        (lambda: CosineClassifier(4, 0), "out_features"),
        (lambda: CosineClassifier(4, 2, scale=0.0), "scale"),
        (lambda: CosineClassifier(4, 2, scale=float("inf")), "scale"),
        (lambda: SplitCosineClassifier(4, []), "group_sizes"),
        (lambda: SplitCosineClassifier(4, [2, 0]), "group_sizes"),
        (lambda: MultiHeadClassifier(4, [2, -1]), "group_sizes"),
    ],
)
def test_heads_refuse_bad_sizes(make_head: Callable[[], nn.Module], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_head()


@pytest.mark.parametrize("kind", KINDS)
def test_growth_while_a_graph_from_before_is_alive_leaves_the_next_backward_working(kind: str) -> None:
    # Found by red-teaming: torch hands out a parameter's gradient accumulator, which knows its old shape,
    # for as long as a graph that uses it is alive.
    net = make(kind)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    x, y = batch()
    held = F.cross_entropy(net(x), y)
    held.backward(retain_graph=True)
    opt.step()
    grow_classifier(net, 6, optimizer=opt)
    opt.zero_grad()
    F.cross_entropy(net(x), y + 3).backward()
    assert all(p.grad is None or p.grad.shape == p.shape for p in net.parameters())
    assert net.classifier.weight.grad is not None if kind in ("linear", "cosine") else True
    del held


# --- found by red-teaming ------------------------------------------------------------------------------------------


def snapshot(net: nn.Module, opt: torch.optim.Optimizer) -> tuple[dict[str, Tensor], int]:
    return copy.deepcopy(net.state_dict()), len(opt.param_groups)


def unchanged(net: nn.Module, opt: torch.optim.Optimizer, before: tuple[dict[str, Tensor], int]) -> bool:
    state, groups = before
    now = net.state_dict()
    return (
        list(now) == list(state)
        and all(torch.equal(now[k], v) for k, v in state.items())
        and len(opt.param_groups) == groups
    )


@pytest.mark.parametrize("kind", KINDS)
def test_lbfgs_and_an_optimizer_of_another_model_are_refused_before_the_growth(kind: str) -> None:
    net = make(kind)
    lbfgs = torch.optim.LBFGS(net.parameters())
    before = snapshot(net, lbfgs)
    with pytest.raises(TypeError, match="LBFGS"):
        grow_classifier(net, 5, optimizer=lbfgs)
    assert unchanged(net, lbfgs, before)
    other = torch.optim.Adam(make(kind).parameters())
    before = snapshot(net, other)
    with pytest.raises(ValueError, match="holds none of the"):
        grow_classifier(net, 5, optimizer=other)
    assert unchanged(net, other, before)


def test_a_new_heads_weight_and_bias_join_the_groups_of_the_last_heads_weight_and_bias() -> None:
    net = make("multi-head")
    decayed = [p for n, p in net.named_parameters() if n.endswith("weight")]
    plain = [p for n, p in net.named_parameters() if n.endswith("bias")]
    lr = torch.tensor(0.1)
    opt = torch.optim.SGD([{"params": decayed, "weight_decay": 0.1}, {"params": plain, "weight_decay": 0.0}], lr=lr)
    grow_classifier(net, 5, optimizer=opt)
    new_head = net.classifier.heads[1]
    group_of = {id(p): g for g in opt.param_groups for p in g["params"]}
    assert group_of[id(new_head.weight)]["weight_decay"] == 0.1
    assert group_of[id(new_head.bias)]["weight_decay"] == 0.0
    # Tensor settings are copied, so a scheduler that slows the old groups in place leaves the new ones alone.
    opt.param_groups[0]["lr"].fill_(0.0)
    assert float(group_of[id(new_head.weight)]["lr"]) == pytest.approx(0.1)


def test_an_optimizer_holding_part_of_the_head_still_carries_it() -> None:
    net = make("multi-head")
    opt = torch.optim.SGD([net.classifier.heads[0].weight], lr=0.1)
    grow_classifier(net, 5, optimizer=opt)
    held = {id(p) for g in opt.param_groups for p in g["params"]}
    assert id(net.classifier.heads[1].weight) in held and id(net.classifier.heads[1].bias) in held


@pytest.mark.parametrize("kind", ["split-cosine", "multi-head"])
def test_a_grouped_head_with_no_group_is_refused_clearly(kind: str) -> None:
    net = make(kind)
    if kind == "multi-head":
        net.classifier.heads = nn.ModuleList()
    else:
        net.classifier.weights = nn.ParameterList()
    with pytest.raises(ValueError, match="no group left"):
        grow_classifier(net, 3)


def test_a_cosine_head_with_a_computed_weight_is_refused_not_grown_silently() -> None:
    net = make("cosine")
    nn.utils.parametrizations.weight_norm(net.classifier)
    before = copy.deepcopy(net.state_dict())
    with pytest.raises(TypeError, match="parametrization"):
        grow_classifier(net, 5)
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


@pytest.mark.parametrize(
    ("saved_kind", "fresh_kind"), [("linear", "cosine"), ("multi-head", "split-cosine"), ("cosine", "multi-head")]
)
def test_grow_to_fit_refuses_another_kind_of_head_and_changes_nothing(saved_kind: str, fresh_kind: str) -> None:
    saved = make(saved_kind)
    grow_classifier(saved, 7)
    fresh = make(fresh_kind)
    before = copy.deepcopy(fresh.state_dict())
    with pytest.raises(ValueError):
        grow_to_fit(fresh, saved.state_dict())
    assert list(fresh.state_dict()) == list(before)


def test_grow_to_fit_refuses_other_feature_widths_bias_settings_and_malformed_entries() -> None:
    cases = [
        ("cosine", {"classifier.weight": torch.zeros(7, 4), "classifier.scale": torch.ones(1)}),
        (
            "multi-head",
            {"classifier.heads.0.weight": torch.zeros(3, 5), "classifier.heads.1.weight": torch.zeros(2, 5)},
        ),
        ("multi-head", {"classifier.heads.0.weight": 1.0}),
        ("split-cosine", {"classifier.weights.0": torch.zeros(())}),
    ]
    for kind, state in cases:
        net = make(kind)
        before = copy.deepcopy(net.state_dict())
        with pytest.raises(ValueError):
            grow_to_fit(net, state)  # type: ignore[arg-type]
        assert list(net.state_dict()) == list(before), kind


def test_growth_and_grow_to_fit_look_through_data_parallel() -> None:
    trained = make("multi-head")
    grow_classifier(nn.DataParallel(trained), 5)
    assert trained.classifier.group_sizes == [3, 2]
    fresh = make("multi-head", seed=4)
    wrapped_state = nn.DataParallel(trained).state_dict()  # keys start with 'module.'
    assert grow_to_fit(nn.DataParallel(fresh), wrapped_state) == 5
    fresh.load_state_dict(trained.state_dict())
    x, _ = batch()
    assert torch.equal(fresh(x), trained(x))


def test_a_linear_head_grown_inside_autocast_gives_the_grown_logits() -> None:
    net = make("linear").float()
    x = batch()[0].float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        net(x)  # autocast keeps a low-precision copy of the weight for the region
        grow_classifier(net, 5)
        assert net(x).shape == (7, 5)


def test_mask_refuses_integer_logits_and_meta_tasks() -> None:
    head = MultiHeadClassifier(4, [2, 3])
    with pytest.raises(TypeError, match="floating point"):
        head.mask(torch.zeros(2, 5, dtype=torch.long), 0)
    with pytest.raises(ValueError, match="meta"):
        head.mask(torch.zeros(2, 5), torch.zeros(2, dtype=torch.long, device="meta"))
