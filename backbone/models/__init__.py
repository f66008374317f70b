"""Reference backbones; importing this module registers them."""

from .mlp import MNISTMLP
from .resnet import BasicBlock, Bottleneck, ResNet, reduced_resnet18, resnet18, resnet34, resnet50
from .resnet32 import ResNet32, resnet32
from .vit import (
    VisionTransformer,
    vit_base_patch16_224,
    vit_small_patch16_224,
    vit_tiny_patch4_32,
    vit_tiny_patch16_224,
)

__all__ = [
    "MNISTMLP",
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "ResNet32",
    "VisionTransformer",
    "reduced_resnet18",
    "resnet18",
    "resnet32",
    "resnet34",
    "resnet50",
    "vit_base_patch16_224",
    "vit_small_patch16_224",
    "vit_tiny_patch4_32",
    "vit_tiny_patch16_224",
]
