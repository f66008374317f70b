"""Reference backbones."""

from backbone.models.mlp import MNISTMLP

__all__ = ["MNISTMLP"]
