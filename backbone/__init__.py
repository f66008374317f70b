"""The backbone API that continual-learning methods are written against.

Example:
    >>> import torch
    >>> import backbone
    >>> net = backbone.MNISTMLP(784, 10)
    >>> logits, features = net(torch.zeros(3, 784), returnt="both")
    >>> logits.shape, features.shape
    (torch.Size([3, 10]), torch.Size([3, 100]))
"""

from .adapters import TimmBackbone, TorchvisionBackbone, from_timm, from_torchvision
from .base import (
    RETURN_TYPES,
    BackboneOutput,
    MammothBackbone,
    ReturnType,
    check_returnt,
    feature_take_indices,
)
from .check import CONTRACT_RULES, ContractError, RuleResult, check_backbone
from .checkpoints import load_checkpoint
from .flat import add_grads, get_grads, get_grads_list, get_params, set_grads, set_params
from .growth import grow_classifier, grow_to_fit, mask_unseen
from .heads import CosineClassifier, MultiHeadClassifier, SplitCosineClassifier
from .init import xavier
from .layout import SELECTIONS, FlatLayout, LayoutEntry, Selection, carry_vector, flat_layout, selected_parameters
from .models import (
    MNISTMLP,
    BasicBlock,
    Bottleneck,
    ResNet,
    ResNet32,
    VisionTransformer,
    reduced_resnet18,
    resnet18,
    resnet32,
    resnet34,
    resnet50,
    vit_base_patch16_224,
    vit_small_patch16_224,
    vit_tiny_patch4_32,
    vit_tiny_patch16_224,
)
from .per_sample import FISHER_KINDS, fisher_diagonal, per_sample_grads
from .registry import (
    RegisteredBackbone,
    get_backbone,
    list_backbones,
    register_backbone,
    registered,
    unregister_backbone,
)
from .shapes import num_flat_features
from .tuning import (
    LINEAR_SITES,
    SSF,
    SSF_SITES,
    Adapter,
    LoRA,
    PromptTokens,
    add_adapters,
    add_lora,
    add_prompts,
    add_ssf,
    freeze_base,
    is_tuning_parameter,
    merge_lora,
    remove_tuning,
    unmerge_lora,
)
from .vit_inputs import call_inputs
from .wrappers import unwrap

__version__ = "0.1.0"

__all__ = [
    "CONTRACT_RULES",
    "FISHER_KINDS",
    "LINEAR_SITES",
    "MNISTMLP",
    "RETURN_TYPES",
    "SELECTIONS",
    "SSF",
    "SSF_SITES",
    "Adapter",
    "BackboneOutput",
    "BasicBlock",
    "Bottleneck",
    "ContractError",
    "CosineClassifier",
    "FlatLayout",
    "LayoutEntry",
    "LoRA",
    "MammothBackbone",
    "MultiHeadClassifier",
    "PromptTokens",
    "RegisteredBackbone",
    "ResNet",
    "ResNet32",
    "ReturnType",
    "RuleResult",
    "Selection",
    "SplitCosineClassifier",
    "TimmBackbone",
    "TorchvisionBackbone",
    "VisionTransformer",
    "add_adapters",
    "add_grads",
    "add_lora",
    "add_prompts",
    "add_ssf",
    "call_inputs",
    "carry_vector",
    "check_backbone",
    "check_returnt",
    "feature_take_indices",
    "fisher_diagonal",
    "flat_layout",
    "freeze_base",
    "from_timm",
    "from_torchvision",
    "get_backbone",
    "get_grads",
    "get_grads_list",
    "get_params",
    "grow_classifier",
    "grow_to_fit",
    "is_tuning_parameter",
    "list_backbones",
    "load_checkpoint",
    "mask_unseen",
    "merge_lora",
    "num_flat_features",
    "per_sample_grads",
    "reduced_resnet18",
    "register_backbone",
    "registered",
    "remove_tuning",
    "resnet18",
    "resnet32",
    "resnet34",
    "resnet50",
    "selected_parameters",
    "set_grads",
    "set_params",
    "unmerge_lora",
    "unregister_backbone",
    "unwrap",
    "vit_base_patch16_224",
    "vit_small_patch16_224",
    "vit_tiny_patch4_32",
    "vit_tiny_patch16_224",
    "xavier",
]
