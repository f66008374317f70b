"""Reference backbones; importing this module registers them."""

from backbone.models.mlp import MNISTMLP
from backbone.models.resnet import BasicBlock, Bottleneck, ResNet, reduced_resnet18, resnet18, resnet34, resnet50

__all__ = ["MNISTMLP", "BasicBlock", "Bottleneck", "ResNet", "reduced_resnet18", "resnet18", "resnet34", "resnet50"]
