"""timm and torchvision classification models as backbones.

:func:`~backbone.from_timm` and :func:`~backbone.from_torchvision` wrap a model in a
:class:`~backbone.MammothBackbone` that passes :func:`~backbone.check_backbone`.
The wrapper holds the model as its only submodule, ``model``: it shares the
model's Parameter objects (nothing is copied) and keeps their order, so the
flat vectors of the wrapper are those of the model.

Neither function downloads anything. Pretrained weights come from a local
checkpoint (a path or a state dict) that the caller passes as ``checkpoint``.
timm and torchvision are optional: ``pip install "backbone[timm]"`` installs
both.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn

from ._checks import check_module, check_num_classes, check_output_fmt
from .base import BackboneOutput, MammothBackbone, ReturnType, check_returnt, feature_take_indices
from .vit_inputs import call_inputs

__all__ = ["TimmBackbone", "TorchvisionBackbone", "from_timm", "from_torchvision"]

Checkpoint = str | os.PathLike[str] | Mapping[str, Tensor] | None


def _load(model: nn.Module, checkpoint: Checkpoint) -> None:
    """Load a local checkpoint strictly into ``model``; nothing is fetched."""
    if checkpoint is None:
        return
    if isinstance(checkpoint, (str, os.PathLike)):
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    elif isinstance(checkpoint, Mapping):
        state = checkpoint
    else:
        raise TypeError(
            f"checkpoint must be a path to a saved state dict or a state dict, got {type(checkpoint).__name__}"
        )
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    model.load_state_dict(state)


def _refuse_downloads(kwargs: dict[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    """``kwargs`` without ``keys``, refusing any of them that asks for weights (None and False ask for none)."""
    for key in keys:
        if kwargs.get(key) is not None and kwargs.get(key) is not False:
            raise ValueError(
                f"{key}={kwargs[key]!r} would download weights, and this package never downloads: pass the "
                "local file (or state dict) as checkpoint= instead"
            )
    return {key: value for key, value in kwargs.items() if key not in keys}


def _check_name(name: str, known: Sequence[str], library: str) -> None:
    """Raise ValueError for a hub name (it would download) or a name ``known`` lacks, listing close matches."""
    if name.split(":", 1)[0].strip().lower() in ("hf-hub", "hf_hub") and ":" in name:
        raise ValueError(
            f"{name!r} names a model on the Hugging Face hub, and this package never downloads: build the "
            "architecture by its timm name and pass the weights, saved locally, as checkpoint="
        )
    # A timm name may carry a pretrained tag ("resnet18.a1_in1k"); the architecture is before the dot.
    architecture = name.split(".", 1)[0] if library == "timm" else name
    if architecture not in known:
        close = difflib.get_close_matches(architecture, known, n=5)
        hint = f"; close matches: {', '.join(close)}" if close else ""
        raise ValueError(f"unknown {library} model {name!r}{hint}")


def _import(name: str) -> Any:
    try:
        return __import__(name)
    except ImportError as error:
        raise ImportError(
            f'{name} is not installed: pip install "backbone[timm]" installs timm and torchvision'
        ) from error


class _Wrapper(MammothBackbone):
    """What both adapters share: the wrapped model is ``self.model``, the only submodule."""

    model: Any  # the wrapped model; Any, since each family has its own attributes

    def __init__(self, model: nn.Module) -> None:
        check_module(model, " to wrap")
        super().__init__()
        self.model = model

    def __setattr__(self, name: str, value: Any) -> None:
        # The classifier lives inside the wrapped model: assigning it there
        # keeps the state_dict keys the model's own.
        if name == "classifier" and "model" in self._modules:
            self._set_classifier(cast(nn.Module, value))
        else:
            super().__setattr__(name, value)

    @property
    def classifier(self) -> nn.Module:  # type: ignore[override]
        """The wrapped model's classifier (see :meth:`get_classifier`)."""
        return self.get_classifier()

    def _set_classifier(self, module: nn.Module) -> None:
        raise TypeError(f"{type(self).__name__} changes its classifier through reset_classifier(num_classes)")


class TimmBackbone(_Wrapper):
    """A timm model as a backbone: timm's protocol is passed straight through.

    Made by :func:`from_timm`. :meth:`forward_features`, :meth:`forward_head`
    and :meth:`forward_intermediates` are the model's own, so ``'full'`` gives
    what ``model.forward_intermediates(x)`` gives (for a ViT, every block as
    an NCHW map). ``feature_dim`` and ``num_features`` are the size of the
    pre-logits features (timm's ``head_hidden_size``, which is timm's
    ``num_features`` for most models). ``feature_info`` is the model's, with
    module names prefixed by ``model.``.

    Args:
        model: a timm model.

    Example:
        >>> import torch
        >>> from backbone import TimmBackbone, from_timm
        >>> net = from_timm("resnet18", num_classes=10)
        >>> isinstance(net, TimmBackbone), net(torch.zeros(2, 3, 64, 64)).shape
        (True, torch.Size([2, 10]))
        >>> [info["module"] for info in net.feature_info]
        ['model.act1', 'model.layer1', 'model.layer2', 'model.layer3', 'model.layer4']
    """

    def __init__(self, model: nn.Module) -> None:
        for name in ("forward_features", "forward_head", "get_classifier", "reset_classifier"):
            if not callable(getattr(model, name, None)):
                raise TypeError(f"expected a timm model (with {name}()), got {type(model).__name__}")
        heads = cast(Any, model).get_classifier()
        if isinstance(heads, tuple):
            raise TypeError(
                f"{type(model).__name__} has {len(heads)} classifier heads (a distilled model "
                "averages the logits of two heads over two tokens), so no one classifier maps its features to its "
                "logits, as the backbone contract requires; use the model without distillation (for example "
                "'deit_tiny_patch16_224' for 'deit_tiny_distilled_patch16_224')"
            )
        super().__init__(model)
        self.feature_dim = int(cast(Any, getattr(model, "head_hidden_size", None) or model.num_features))
        self.feature_info = [
            {**info, "module": f"model.{info['module']}"} for info in getattr(model, "feature_info", None) or []
        ]

    def forward(  # type: ignore[override]
        self,
        x: Tensor,
        AB: Mapping[int, Mapping[str, Any]] | str | None = None,
        returnt: ReturnType = "out",
        *,
        prompts: Any = None,
        prompt_mode: str = "replace",
        prefixes: Mapping[int, Tensor] | None = None,
        values: Mapping[int, Tensor] | None = None,
    ) -> BackboneOutput:
        """Run the model and return what ``returnt`` selects; a ViT also takes prompts, prefixes, values and ``AB``.

        The call-time inputs are those of the package's
        :meth:`VisionTransformer.forward <backbone.VisionTransformer.forward>`
        (``AB`` second, as Mammoth passes it), given to the timm ViT by
        :func:`~backbone.call_inputs` for this call. ``returnt='full'`` with
        prompts is refused: timm's stages assume the patch tokens right after
        the prefix tokens.

        Raises:
            TypeError: call-time inputs given to a model that is not a ViT in
                timm's layout, or of the wrong type.
            ValueError: a bad ``returnt``, block, layer, mode or shape.

        Example:
            >>> import torch
            >>> from backbone import from_timm
            >>> net = from_timm("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=5).eval()
            >>> x = torch.randn(2, 3, 32, 32)
            >>> net(x, returnt="features", prompts=torch.zeros(4, 192)).shape
            torch.Size([2, 192])
        """
        if isinstance(AB, str):  # net(x, "features"): the backbone API's positional returnt
            if returnt != "out":
                raise TypeError(f"returnt given twice: {AB!r} as the second argument and {returnt!r} by name")
            AB, returnt = None, cast(ReturnType, AB)
        given = {"prompts": prompts, "prefixes": prefixes, "values": values, "AB": AB}
        if prompt_mode not in ("replace", "add"):
            raise ValueError(f"prompt_mode must be one of 'replace', 'add', got {prompt_mode!r}")
        if all(v is None for v in given.values()):
            return self._forward_returnt(x, returnt)
        returnt = check_returnt(returnt)
        if returnt == "full" and prompts is not None:
            raise ValueError(
                "returnt='full' with prompts is not supported on a timm ViT (its stages assume no prompt tokens); "
                "use forward_features, or the package's VisionTransformer with the timm weights (load_checkpoint)"
            )
        with call_inputs(self.model, prompt_mode=prompt_mode, **given):
            return self._forward_returnt(x, returnt)

    def forward_features(self, x: Tensor) -> Tensor:
        """The model's ``forward_features``: its final unpooled output.

        Example:
            >>> import torch
            >>> from backbone import from_timm
            >>> from_timm("resnet18", num_classes=10).forward_features(torch.zeros(1, 3, 64, 64)).shape
            torch.Size([1, 512, 2, 2])
        """
        return cast(Tensor, self.model.forward_features(x))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """The model's ``forward_head``: pooling, pre-logits layers, then the classifier.

        Example:
            >>> import torch
            >>> from backbone import from_timm
            >>> net = from_timm("resnet18", num_classes=10)
            >>> net.forward_head(torch.zeros(1, 512, 2, 2), pre_logits=True).shape
            torch.Size([1, 512])
        """
        return cast(Tensor, self.model.forward_head(x, pre_logits=pre_logits))

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """The model's ``forward_intermediates``, with the same arguments.

        Example:
            >>> import torch
            >>> from backbone import from_timm
            >>> stages = from_timm("resnet18").forward_intermediates(torch.zeros(1, 3, 64, 64), intermediates_only=True)
            >>> [s.shape[-1] for s in stages]
            [32, 16, 8, 4, 2]
        """
        if not callable(getattr(self.model, "forward_intermediates", None)):
            return super().forward_intermediates(x, indices, norm, stop_early, output_fmt, intermediates_only)
        return cast(
            "list[Tensor] | tuple[Tensor, list[Tensor]]",
            self.model.forward_intermediates(
                x,
                indices=indices,
                norm=norm,
                stop_early=stop_early,
                output_fmt=output_fmt,
                intermediates_only=intermediates_only,
            ),
        )

    def get_classifier(self) -> nn.Module:
        """The model's ``get_classifier()``.

        Example:
            >>> from backbone import from_timm
            >>> net = from_timm("resnet18", num_classes=10)
            >>> net.get_classifier() is net.model.fc
            True
        """
        return cast(nn.Module, self.model.get_classifier())

    @property
    def classifier(self) -> nn.Module:  # type: ignore[override]
        """What maps the features ``[B, D]`` to the logits: the model's classifier, made to take ``[B, D]``.

        For most models this is ``get_classifier()`` itself. A model whose
        classifier is a 1x1 convolution (``dla34``, ``dpn68``) classifies a
        pooled ``[B, D, 1, 1]`` map; its ``classifier`` applies that
        convolution to the features as such a map and flattens the result,
        with the convolution's own parameters.

        Example:
            >>> import torch
            >>> from backbone import from_timm
            >>> net = from_timm("dla34", num_classes=5)
            >>> type(net.get_classifier()).__name__, net.classifier(torch.zeros(2, net.feature_dim)).shape
            ('Conv2d', torch.Size([2, 5]))
        """
        head = self.get_classifier()
        return _PointwiseClassifier(head) if isinstance(head, nn.Conv2d) else head

    def reset_classifier(self, num_classes: int) -> None:
        """Call the model's ``reset_classifier(num_classes)``, after checking ``num_classes``.

        Example:
            >>> from backbone import from_timm
            >>> net = from_timm("resnet18", num_classes=10)
            >>> net.reset_classifier(3)
            >>> net.num_classes, net.model.fc.out_features
            (3, 3)
        """
        check_num_classes(num_classes)
        self.model.reset_classifier(num_classes)

    def grow_classifier(self, num_classes: int, *, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Grow the model's linear classifier (see :func:`backbone.grow_classifier`); ``model.num_classes`` follows.

        Example:
            >>> import torch
            >>> from backbone import from_timm
            >>> net = from_timm("resnet18", num_classes=2)
            >>> net.grow_classifier(5)
            >>> net.num_classes, net.model.num_classes, net(torch.zeros(2, 3, 64, 64)).shape
            (5, 5, torch.Size([2, 5]))
        """
        super().grow_classifier(num_classes, optimizer=optimizer)
        self.model.num_classes = num_classes

    @property  # type: ignore[misc]
    def num_classes(self) -> int:
        """The model's ``num_classes``.

        Example:
            >>> from backbone import from_timm
            >>> from_timm("resnet18", num_classes=10).num_classes
            10
        """
        return int(self.model.num_classes)


def from_timm(model: str | nn.Module, *, checkpoint: Checkpoint = None, **kwargs: Any) -> TimmBackbone:
    """Make a timm model, by name or instance, into a backbone.

    A name is built with ``timm.create_model(name, pretrained=False,
    **kwargs)``; weights, if any, come from ``checkpoint``, loaded strictly
    with the model's own ``state_dict`` keys.

    Args:
        model: a timm model name, such as ``"vit_tiny_patch16_224"``, or a
            timm model.
        checkpoint: a local file saved with ``torch.save(state_dict)``, or a
            state dict.
        **kwargs: passed to ``timm.create_model`` (``num_classes``,
            ``img_size``, ...); not allowed with an instance.

    Returns:
        The backbone, sharing the model's parameters.

    Raises:
        ImportError: timm is not installed.
        ValueError: ``pretrained=True`` is asked for, or a hub name
            (``hf-hub:...``) is given (either would download), or timm has
            no model of that name (the message lists close matches).
            ``pretrained=False`` and ``pretrained=None`` are accepted.
        TypeError: ``model`` is neither a name nor a timm model, or kwargs
            are given with an instance.

    Example:
        >>> import torch
        >>> from backbone import check_backbone, from_timm
        >>> net = from_timm("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=5)
        >>> all(r.passed for r in check_backbone(net, torch.randn(2, 3, 32, 32)))
        True
        >>> from_timm("resnet18", pretrained=True)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: pretrained=True would download weights, and this package never downloads: ...
    """
    kwargs = _refuse_downloads(kwargs, ("pretrained",))
    if isinstance(model, str):
        timm = _import("timm")
        _check_name(model, timm.list_models(), "timm")
        model = timm.create_model(model, pretrained=False, **kwargs)
    elif kwargs:
        raise TypeError(f"keyword arguments build a model from a name; got an instance and {sorted(kwargs)}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a timm model name or a timm model, got {type(model).__name__}")
    _load(model, checkpoint)
    return TimmBackbone(model)


class _PointwiseClassifier(nn.Module):
    """A 1x1 convolution applied to features ``[B, D]`` as to a ``[B, D, 1, 1]`` map, flattened."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: Tensor) -> Tensor:
        return cast(Tensor, self.conv(x[:, :, None, None]).flatten(1))


# --- torchvision --------------------------------------------------------------


class TorchvisionBackbone(_Wrapper):
    """A torchvision classification model as a backbone, split at its stages.

    Made by :func:`from_torchvision`. Supported families: ResNet (and
    ResNeXt, Wide ResNet), VisionTransformer, ConvNeXt, EfficientNet (v1 and
    v2), MobileNetV2 and MobileNetV3.

    * :meth:`forward_features` runs the model up to its last feature map (the
      token sequence, after the final LayerNorm, for a ViT);
    * :meth:`forward_head` pools as the model does (the class token for a
      ViT), applies whatever the model's head does before its last linear
      layer (ConvNeXt's LayerNorm, MobileNetV3's hidden layer, dropout), and
      that last linear layer is the classifier;
    * the stages are the residual stages (ResNet: the stem and ``layer1`` to
      ``layer4``), the transformer blocks (ViT, given as NCHW maps of the patch
      tokens by default, as timm does), or, for ConvNeXt, EfficientNet and
      MobileNet, the last block of ``features`` at each resolution.

    ``feature_info`` (channels and reduction of each stage) is measured once,
    when the backbone is built, with one forward pass of a zero image in eval
    mode.

    Args:
        model: a torchvision classification model of a supported family.

    Raises:
        TypeError: the model's family is not supported.

    Example:
        >>> from backbone import TorchvisionBackbone, from_torchvision
        >>> net = from_torchvision("resnet18", num_classes=10)
        >>> isinstance(net, TorchvisionBackbone), [info["num_chs"] for info in net.feature_info]
        (True, [64, 64, 128, 256, 512])
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self._family = _family(model)
        self._head_path = self._family.head
        self.feature_dim = self._measure(self._family.stages(model))

    def _measure(self, candidates: list[str]) -> int:
        """Fill feature_info from one forward of a zero image; return the pre-logits size."""
        size = int(getattr(self.model, "image_size", 0)) or 64
        channels = _in_channels(self.model)
        param = next(self.model.parameters())
        x = torch.zeros(1, channels, size, size, dtype=param.dtype, device=param.device)
        outputs: dict[str, Tensor] = {}
        handles = [
            self.model.get_submodule(name).register_forward_hook(
                lambda module, args, out, name=name: outputs.__setitem__(name, out)
            )
            for name in candidates
        ]
        was_training = [(m, m.training) for m in self.model.modules()]
        try:
            self.model.eval()
            with torch.no_grad():
                features = self.forward_head(self.forward_features(x), pre_logits=True)
        finally:
            for handle in handles:
                handle.remove()
            for module, training in was_training:
                module.training = training
        info = []
        for name in candidates:
            out = outputs[name]
            if self._family.tokens:
                patch = int(self.model.patch_size)
                info.append({"num_chs": int(out.shape[-1]), "reduction": patch, "module": f"model.{name}"})
            else:
                reduction = size // int(out.shape[-1])
                info.append({"num_chs": int(out.shape[1]), "reduction": reduction, "module": f"model.{name}"})
        if self._family.narrow:
            info = _last_at_each_reduction(info[:-1] if self._family.head_block else info)
        self.feature_info = info
        return int(features.shape[1])

    def forward_features(self, x: Tensor) -> Tensor:
        """Run the model up to its last feature map (a ViT: its tokens after the final LayerNorm).

        Example:
            >>> import torch
            >>> from backbone import from_torchvision
            >>> net = from_torchvision("mobilenet_v3_small", num_classes=10)
            >>> net.forward_features(torch.zeros(1, 3, 64, 64)).shape
            torch.Size([1, 576, 2, 2])
        """
        return self._family.features(self.model, x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Pool as the model does, apply its head up to the last linear layer, then that one unless ``pre_logits``.

        Example:
            >>> import torch
            >>> from backbone import from_torchvision
            >>> net = from_torchvision("mobilenet_v3_small", num_classes=10)
            >>> final = torch.zeros(1, 576, 2, 2)
            >>> net.forward_head(final, pre_logits=True).shape, net.forward_head(final).shape
            (torch.Size([1, 1024]), torch.Size([1, 10]))
        """
        x = self._family.pool(self.model, x)
        head = self.model.get_submodule(self._head_path)
        if isinstance(head, nn.Sequential):
            x = head[:-1](x)
        return x if pre_logits else cast(Tensor, self.get_classifier()(x))

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """The stages, through forward hooks; a ViT's blocks as NCHW maps (or ``'NLC'`` tokens), as timm gives them.

        See :meth:`MammothBackbone.forward_intermediates`. ``norm`` applies a
        ViT's final LayerNorm to the blocks; convolutional families have no
        norm to apply.

        Example:
            >>> import torch
            >>> from backbone import from_torchvision
            >>> net = from_torchvision("convnext_tiny", num_classes=10)
            >>> stages = net.forward_intermediates(torch.zeros(1, 3, 64, 64), intermediates_only=True)
            >>> [tuple(s.shape[1:]) for s in stages]
            [(96, 16, 16), (192, 8, 8), (384, 4, 4), (768, 2, 2)]
        """
        if not self._family.tokens:
            return super().forward_intermediates(x, indices, norm, stop_early, output_fmt, intermediates_only)
        check_output_fmt(output_fmt, ("NCHW", "NLC"))
        feature_take_indices(len(self.feature_info), indices)  # checks indices before any work
        final, blocks = cast(
            "tuple[Tensor, list[Tensor]]", super().forward_intermediates(x, indices, False, stop_early, "NCHW", False)
        )
        if stop_early:
            final = self.model.encoder.ln(final)
        if norm:
            blocks = [self.model.encoder.ln(t) for t in blocks]
        blocks = [t[:, 1:] for t in blocks]
        if output_fmt == "NCHW":
            grid = x.shape[-1] // int(self.model.patch_size)
            blocks = [t.reshape(t.shape[0], grid, grid, -1).permute(0, 3, 1, 2).contiguous() for t in blocks]
        return blocks if intermediates_only else (final, blocks)

    def get_classifier(self) -> nn.Module:
        """The model's last linear layer (``fc``, ``heads.head``, or the last layer of ``classifier``).

        Example:
            >>> from backbone import from_torchvision
            >>> net = from_torchvision("efficientnet_b0", num_classes=10)
            >>> net.get_classifier() is net.model.classifier[1]
            True
        """
        head = self.model.get_submodule(self._head_path)
        return head[-1] if isinstance(head, nn.Sequential) else head

    def _set_classifier(self, module: nn.Module) -> None:
        head = self.model.get_submodule(self._head_path)
        if isinstance(head, nn.Sequential):
            head[-1] = module
        else:
            parent, _, name = self._head_path.rpartition(".")
            setattr(self.model.get_submodule(parent) if parent else self.model, name, module)

    @property  # type: ignore[misc]
    def num_classes(self) -> int:
        """The classifier's ``out_features`` (0 after ``reset_classifier(0)``).

        Example:
            >>> from backbone import from_torchvision
            >>> net = from_torchvision("resnet18", num_classes=10)
            >>> net.reset_classifier(0)
            >>> net.num_classes
            0
        """
        classifier = self.get_classifier()
        return classifier.out_features if isinstance(classifier, nn.Linear) else 0


@dataclass(frozen=True)
class _Family:
    """Everything the adapter needs to know about one family of torchvision models, in one row."""

    name: str
    classes: tuple[str, ...]  # torchvision.models classes of the family
    head: str  # the head's path; its last layer (or itself) is the classifier
    stages: Callable[[Any], list[str]]  # candidate stage modules (narrowed when ``narrow``)
    features: Callable[[Any, Tensor], Tensor]  # the model up to its last feature map
    pool: Callable[[Any, Tensor], Tensor]  # the final map to the head's input
    tokens: bool = False  # the final output is a token sequence (a ViT)
    narrow: bool = False  # keep only the last block of ``features`` at each resolution
    head_block: bool = False  # the last block of ``features`` is the head's 1x1 expansion, not a stage


def _resnet_features(model: Any, x: Tensor) -> Tensor:
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    return cast(Tensor, model.layer4(model.layer3(model.layer2(model.layer1(x)))))


def _vit_features(model: Any, x: Tensor) -> Tensor:
    x = model._process_input(x)
    x = torch.cat([model.class_token.expand(x.shape[0], -1, -1), x], dim=1)
    return cast(Tensor, model.encoder(x))


def _average(model: Any, x: Tensor, *, flatten: bool = True) -> Tensor:
    pool = getattr(model, "avgpool", None)
    x = pool(x) if pool is not None else nn.functional.adaptive_avg_pool2d(x, 1)
    return torch.flatten(x, 1) if flatten else x


def _blocks(model: Any) -> list[str]:
    return [f"features.{i}" for i in range(len(model.features))]


def _run_blocks(model: Any, x: Tensor) -> Tensor:
    return cast(Tensor, model.features(x))


_FAMILIES = (
    _Family(
        "resnet",
        ("ResNet",),
        head="fc",
        stages=lambda model: ["relu", "layer1", "layer2", "layer3", "layer4"],
        features=_resnet_features,
        pool=_average,
    ),
    _Family(
        "vit",
        ("VisionTransformer",),
        head="heads",
        stages=lambda model: [f"encoder.layers.{name}" for name, _ in model.encoder.layers.named_children()],
        features=_vit_features,
        pool=lambda model, x: x[:, 0],  # the class token
        tokens=True,
    ),
    _Family(
        "convnext",
        ("ConvNeXt",),
        head="classifier",
        stages=_blocks,
        features=_run_blocks,
        pool=lambda model, x: _average(model, x, flatten=False),  # its head's LayerNorm2d flattens
        narrow=True,
    ),
    _Family(
        "efficientnet",
        ("EfficientNet",),
        head="classifier",
        stages=_blocks,
        features=_run_blocks,
        pool=_average,
        narrow=True,
        head_block=True,
    ),
    _Family(
        "mobilenet",
        ("MobileNetV2", "MobileNetV3"),
        head="classifier",
        stages=_blocks,
        features=_run_blocks,
        pool=_average,
        narrow=True,
        head_block=True,
    ),
)


def _family(model: nn.Module) -> _Family:
    tv = _import("torchvision")
    for family in _FAMILIES:
        if isinstance(model, tuple(getattr(tv.models, name) for name in family.classes)):
            return family
    supported = ", ".join(name for family in _FAMILIES for name in family.classes)
    raise TypeError(f"from_torchvision supports torchvision's {supported} models, got {type(model).__name__}")


def _in_channels(model: nn.Module) -> int:
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return module.in_channels
    return 3


def _last_at_each_reduction(info: list[dict[str, Any]]) -> list[dict[str, Any]]:
    kept: dict[int, dict[str, Any]] = {}
    for entry in info:
        kept[entry["reduction"]] = entry
    return sorted(kept.values(), key=lambda entry: entry["reduction"])


def from_torchvision(model: str | nn.Module, *, checkpoint: Checkpoint = None, **kwargs: Any) -> TorchvisionBackbone:
    """Make a torchvision classification model, by name or instance, into a backbone.

    A name is built with ``torchvision.models.get_model(name, weights=None,
    **kwargs)``; weights, if any, come from ``checkpoint``, loaded strictly
    with the model's own ``state_dict`` keys.

    Args:
        model: a torchvision model name, such as ``"resnet18"``, or a model.
        checkpoint: a local file saved with ``torch.save(state_dict)``, or a
            state dict.
        **kwargs: passed to ``get_model`` (``num_classes``, ...); not allowed
            with an instance.

    Returns:
        The backbone, sharing the model's parameters.

    Raises:
        ImportError: torchvision is not installed.
        ValueError: ``weights`` are asked for (that would download), or
            torchvision has no model of that name (the message lists close
            matches). ``weights=None`` is accepted.
        TypeError: the model's family is not supported, or kwargs are given
            with an instance.

    Example:
        >>> import torch
        >>> from backbone import check_backbone, from_torchvision
        >>> net = from_torchvision("efficientnet_b0", num_classes=10)
        >>> all(r.passed for r in check_backbone(net, torch.randn(2, 3, 64, 64)))
        True
    """
    kwargs = _refuse_downloads(kwargs, ("weights", "pretrained"))
    if isinstance(model, str):
        tv = _import("torchvision")
        _check_name(model, tv.models.list_models(), "torchvision")
        model = tv.models.get_model(model, weights=None, **kwargs)
    elif kwargs:
        raise TypeError(f"keyword arguments build a model from a name; got an instance and {sorted(kwargs)}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torchvision model name or a torchvision model, got {type(model).__name__}")
    _load(model, checkpoint)
    return TorchvisionBackbone(model)
