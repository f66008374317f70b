"""Every row of the migration guide (docs/migrating.rst), as the Mammoth-style code it describes."""

from __future__ import annotations

import itertools
import subprocess
import sys
import textwrap
from argparse import Namespace
from pathlib import Path

import pytest
import torch
from nets import MammothStyleNet, TinyNet
from torch import Tensor, nn
from torch.nn import functional as F

import backbone
from backbone import MNISTMLP, MammothBackbone, resnet18, resnet50, vit_tiny_patch4_32
from backbone.mammoth import get_backbone, register_into

ROOT = Path(__file__).resolve().parents[1]


# --- the table -----------------------------------------------------------------


def test_missing_gradients_read_as_zeros() -> None:
    net = TinyNet()
    net.stage1.requires_grad_(False)
    net(torch.randn(2, 4)).sum().backward()
    assert net.get_grads()[:15].abs().sum() == 0 and len(net.get_grads_list()) == 6


def test_set_params_and_set_grads_copy() -> None:
    net, v = TinyNet(), torch.zeros(35)
    net.set_params(v)
    net.set_grads(v)
    v += 1
    assert net.get_params().abs().sum() == 0 and net.get_grads().abs().sum() == 0


def test_sizes_are_checked_before_anything_is_written() -> None:
    net = TinyNet()
    before = net.get_params().detach().clone()
    with pytest.raises(ValueError, match="must have 35 elements"):
        net.set_params(torch.ones(34))
    assert torch.equal(net.get_params().detach(), before)


def test_to_is_nn_module_to_and_device_follows() -> None:
    net = MammothStyleNet().to("cpu")  # a Mammoth-style to(device) override
    net = net.to(torch.float64)
    assert net.device == torch.device("cpu") and net.fc1.weight.dtype == torch.float64


@pytest.mark.parametrize("returnt", ["all", "logits", None])
def test_returnt_is_one_of_four(returnt: object) -> None:
    with pytest.raises(ValueError, match="returnt must be one of 'out', 'features', 'both', 'full'"):
        MNISTMLP(4, 2)(torch.zeros(1, 4), returnt=returnt)  # type: ignore[arg-type]


def test_mammoths_all_is_both_here() -> None:
    net = MNISTMLP(4, 2).eval()
    x = torch.randn(3, 4)
    out, feats = net(x, returnt="both")  # what Mammoth's older 'all' returned
    assert torch.equal(out, net(x)) and torch.equal(feats, net(x, returnt="features"))


def test_full_is_a_tuple_of_logits_and_a_list() -> None:
    logits, feats = resnet18(10, num_filters=4)(torch.randn(2, 3, 32, 32), returnt="full")  # TwF's unpacking
    assert isinstance(feats, list) and logits.shape == (2, 10)


def test_forward_features_and_feature_info_are_enough() -> None:
    class Small(MammothBackbone):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Linear(4, 3), nn.ReLU())
            self.classifier = nn.Linear(3, 2)
            self.feature_dim = 3
            self.feature_info = [{"num_chs": 3, "reduction": 1, "module": "body"}]

        def forward_features(self, x: Tensor) -> Tensor:
            return self.body(x)  # type: ignore[no-any-return]

    logits, stages = Small()(torch.randn(2, 4), returnt="full")
    assert logits.shape == (2, 2) and stages[0].shape == (2, 3)


def test_the_vit_has_timms_parameter_names() -> None:
    names = list(vit_tiny_patch4_32(10).state_dict())
    assert names[:4] == ["cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"]
    assert "blocks.0.attn.qkv.weight" in names and names[-2:] == ["head.weight", "head.bias"]


def test_classifier_and_feature_dim_are_set() -> None:
    net = resnet18(10)
    assert net.classifier.in_features == net.feature_dim == 512


def test_xavier_reaches_linear_subclasses() -> None:
    class Cosine(nn.Linear):
        pass

    layer = Cosine(4, 3)
    with torch.no_grad():
        layer.bias.fill_(1.0)
    backbone.xavier(layer)
    assert torch.equal(layer.bias, torch.zeros(3))


def test_num_flat_features_refuses_a_scalar() -> None:
    assert backbone.num_flat_features(torch.zeros(2, 3, 4)) == 12
    with pytest.raises(ValueError, match="batch dimension"):
        backbone.num_flat_features(torch.tensor(1.0))


def test_get_params_writes_into_a_kept_buffer() -> None:
    net, buffer = TinyNet(), torch.full((35,), float("nan"))
    assert net.get_params(out=buffer) is buffer
    assert torch.equal(buffer, torch.cat([p.detach().flatten() for p in net.parameters()]))


def test_only_device_is_accepted() -> None:
    with pytest.raises(TypeError, match="unexpected keyword argument 'devcie'"):
        MammothBackbone(devcie="cpu")


# --- pre-activation taps: TwF and LiDER -----------------------------------------


def resnet_prerelu_by_hand(net: backbone.ResNet, x: Tensor) -> list[Tensor]:
    """The pre-ReLU stem and stage outputs, written out as Mammoth's ResNet computes them."""
    stem = net.bn1(net.conv1(x))
    h, stages = F.relu(stem), [stem]
    for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
        for block in layer[:-1]:
            h = block(h)
        last = layer[-1]
        if isinstance(last, backbone.Bottleneck):
            inner = F.relu(last.bn2(last.conv2(F.relu(last.bn1(last.conv1(h))))))
            pre = last.bn3(last.conv3(inner)) + last.shortcut(h)
        else:
            pre = last.bn2(last.conv2(F.relu(last.bn1(last.conv1(h))))) + last.shortcut(h)
        stages.append(pre)
        h = F.relu(pre)
    return stages


def by_hand(net: MammothBackbone, x: Tensor) -> list[Tensor]:
    if isinstance(net, backbone.ResNet):
        return resnet_prerelu_by_hand(net, x)
    if isinstance(net, MNISTMLP):
        pre1 = net.fc1(x.flatten(1))
        return [pre1, net.fc2(F.relu(pre1))]
    assert isinstance(net, backbone.VisionTransformer)
    return vit_stages_by_hand(net, x)  # a block ends in a residual sum: no activation to take before


def vit_stages_by_hand(net: backbone.VisionTransformer, x: Tensor) -> list[Tensor]:
    """Each block's patch tokens as a map ``[B, D, H/p, W/p]``, the tokens computed one block at a time."""
    patches = F.conv2d(x, net.patch_embed.proj.weight, net.patch_embed.proj.bias, stride=net.patch_embed.patch_size)
    batch, dim, rows, cols = patches.shape
    tokens = torch.cat([net.cls_token.expand(batch, 1, dim), patches.flatten(2).transpose(1, 2)], dim=1)
    tokens = tokens + net.pos_embed
    stages = []
    for block in net.blocks:
        tokens = tokens + block.attn(block.norm1(tokens))
        tokens = tokens + block.mlp(block.norm2(tokens))
        patch_tokens = tokens[:, 1:]  # the class token is left out
        stages.append(patch_tokens.reshape(batch, rows, cols, dim).permute(0, 3, 1, 2))
    return stages


def lipschitz_like(stages: list[Tensor]) -> Tensor:
    """A LiDER-style term over consecutive stages: how much each stage stretches its input's norm."""
    norms = [s.flatten(1).norm(dim=1) for s in stages]
    return sum((b / (a + 1e-6)).mean() for a, b in itertools.pairwise(norms))  # type: ignore[return-value]


NETS = {
    "resnet18": (lambda: resnet18(5, num_filters=4), (4, 3, 16, 16)),
    "resnet50": (lambda: resnet50(5, num_filters=4), (4, 3, 16, 16)),
    "mnistmlp": (lambda: MNISTMLP(12, 5, hidden_size=7), (4, 12)),
    "vit": (
        lambda: backbone.VisionTransformer(img_size=16, patch_size=4, num_classes=5, embed_dim=8, depth=3, num_heads=2),
        (4, 3, 16, 16),
    ),
}


@pytest.mark.parametrize("name", NETS)
def test_a_twf_lider_step_on_pre_activations_matches_a_hand_written_forward(name: str) -> None:
    torch.manual_seed(0)
    make, shape = NETS[name]
    # float64, so that two graphs that compute the same sums in another order agree tightly.
    net = make().double().train()
    x, y = torch.randn(shape, dtype=torch.float64), torch.randint(0, 5, (shape[0],))
    net.set_return_prerelu(True)
    # The Mammoth-style step: logits and pre-activation stages from one 'full' call.
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    optimizer.zero_grad()
    logits, stages = net(x, returnt="full")
    loss = F.cross_entropy(logits, y) + lipschitz_like(stages)
    loss.backward()
    grads = net.get_grads()
    # The same numbers from the hand-written pre-activation forward.
    net.zero_grad()
    expected_stages = by_hand(net, x)
    expected = F.cross_entropy(net(x), y) + lipschitz_like(expected_stages)
    expected.backward()
    assert len(stages) == len(expected_stages)
    for a, b in zip(stages, expected_stages, strict=True):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(grads, net.get_grads())
    optimizer.step()
    if isinstance(net, backbone.ResNet):  # TwF's teacher reads the last block of each stage
        _, stages = net.eval()(x, returnt="full")
        assert torch.equal(net.layer3[-1].prerelu, stages[3])
    net.set_return_prerelu(False)
    _, post = net.eval()(x, returnt="full")
    assert all(bool((s >= 0).all()) for s in post) or name == "vit"


def test_prerelu_costs_nothing_when_off() -> None:
    net = resnet18(5, num_filters=4)
    net(torch.randn(2, 3, 8, 8), returnt="full")
    assert not any(hasattr(m, "prerelu") for m in net.modules())


# --- checkpoints ------------------------------------------------------------------


class MammothMLPLayout(nn.Module):
    """The module structure of Mammoth's MNISTMLP: each layer reachable three ways."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(784, 100)
        self.fc2 = nn.Linear(100, 100)
        self._features = nn.Sequential(self.fc1, nn.ReLU(), self.fc2, nn.ReLU())
        self.classifier = nn.Linear(100, 10)
        self.net = nn.Sequential(self._features, self.classifier)


def test_a_mammoth_mlp_checkpoint_loads_strictly() -> None:
    theirs = MammothMLPLayout()
    state = theirs.state_dict()
    assert len(state) == 16
    ours = MNISTMLP(784, 10)
    assert len(ours.state_dict()) == 6
    ours.load_state_dict(state)
    x = torch.randn(3, 784)
    assert torch.equal(ours(x), theirs.net(x))
    state["net.1.bias"] = state["net.1.bias"] + 1
    with pytest.raises(ValueError, match=r"should be an alias of .classifier\.bias."):
        MNISTMLP(784, 10).load_state_dict(state)


def test_resnet_checkpoints_have_mammoths_keys() -> None:
    keys = list(resnet18(10).state_dict())
    assert len(keys) == 122
    assert keys[:2] == ["conv1.weight", "bn1.weight"]
    assert "layer2.0.shortcut.0.weight" in keys and "layer1.0.shortcut.0.weight" not in keys
    assert keys[-2:] == ["classifier.weight", "classifier.bias"]


# --- registry and Namespace ----------------------------------------------------------


def test_a_copied_mammoth_file_re_registering_resnet18_is_told_how(tmp_path: Path) -> None:
    source = textwrap.dedent(
        """
        from backbone import MammothBackbone, register_backbone, resnet18

        @register_backbone("resnet18")
        def my_resnet18(num_classes: int, num_filters: int = 64):
            return resnet18(num_classes, num_filters)
        """
    )
    (tmp_path / "copied.py").write_text(source)
    run = subprocess.run([sys.executable, "-c", "import copied"], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode != 0 and "pass override=True to replace it" in run.stderr
    (tmp_path / "copied.py").write_text(source.replace('"resnet18")', '"resnet18", override=True)'))
    run = subprocess.run([sys.executable, "-c", "import copied"], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


def test_building_from_an_argparse_namespace() -> None:
    args = Namespace(backbone="mnistmlp", input_size=784, output_size=10, lr=0.1, n_epochs=1)
    net = get_backbone(args)
    assert isinstance(net, MNISTMLP) and net.num_classes == 10 and net.feature_dim == 100
    with pytest.raises(ValueError, match="args has no 'output_size'"):
        get_backbone(Namespace(backbone="mnistmlp", input_size=784))


def test_set_params_does_not_share_memory_so_a_saved_anchor_stays_as_saved() -> None:
    torch.manual_seed(0)
    net, spare = TinyNet(), TinyNet()
    anchor = net.get_params().detach().clone()
    saved = anchor.clone()
    spare.set_params(anchor)  # HAL: load the anchor into a spare network ...
    optimizer = torch.optim.SGD(spare.parameters(), lr=0.5)
    spare(torch.randn(4, 4)).sum().backward()
    optimizer.step()  # ... and train the spare network
    assert torch.equal(anchor, saved)  # with Mammoth's aliasing, this changed


def test_inside_a_mammoth_checkout_backbone_reference_is_this_package(tmp_path: Path) -> None:
    mammoth = tmp_path / "mammoth"
    (mammoth / "backbone").mkdir(parents=True)
    (mammoth / "backbone" / "__init__.py").write_text(
        textwrap.dedent(
            """
            REGISTERED_BACKBONES = {}

            def register_backbone(name):
                def decorator(builder):
                    if name in REGISTERED_BACKBONES:
                        raise ValueError(f"Name {name} already registered!")
                    REGISTERED_BACKBONES[name] = {"class": builder}
                    return builder
                return decorator
            """
        )
    )
    (mammoth / "backbone" / "reference.py").write_text(
        textwrap.dedent(
            """
            from backbone import register_backbone
            from backbone_reference.mammoth import register_into

            register_into(register_backbone, prefix="ref-")
            """
        )
    )
    script = textwrap.dedent(
        """
        import sys
        sys.path.insert(0, ".")             # Mammoth puts its root first
        import backbone
        import backbone.reference
        assert not hasattr(backbone, "MammothBackbone"), "import backbone should find Mammoth's"
        net = backbone.REGISTERED_BACKBONES["ref-resnet18"]["class"](num_classes=10)
        import backbone_reference
        assert isinstance(net, backbone_reference.MammothBackbone)
        net.set_return_prerelu(True)
        print(sorted(backbone.REGISTERED_BACKBONES)[:3])
        """
    )
    run = subprocess.run([sys.executable, "-c", script], cwd=mammoth, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "ref-mnistmlp" in run.stdout and "ref-reduced-resnet18" in run.stdout


def test_register_into_a_mammoth_style_registry() -> None:
    theirs: dict[str, object] = {}

    def register_backbone(name: str):  # type: ignore[no-untyped-def]
        def decorator(builder):  # type: ignore[no-untyped-def]
            theirs[name] = builder
            return builder

        return decorator

    names = register_into(register_backbone)
    assert names == backbone.list_backbones() and set(theirs) == set(names)
    assert register_into(register_backbone, "resnet18", prefix="one-") == ["one-resnet18"]  # a name, not its letters
