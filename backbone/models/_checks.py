"""Argument checks shared by the reference backbones."""

from __future__ import annotations


def check_positive_ints(**values: int) -> None:
    """Raise ``ValueError`` naming the first argument that is not a positive int (bools are not ints here)."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def check_bool(name: str, value: object) -> None:
    """Raise ``TypeError`` naming the argument unless ``value`` is a bool."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
