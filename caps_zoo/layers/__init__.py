"""Shared Keras layers of the zoo."""

from caps_zoo.layers.capsule import CapsuleStack, Length, Mask, PrimaryCaps, RoutingCaps, squash
from caps_zoo.layers.filterbank import FilterbankRead, FilterbankWrite

__all__ = [
    "CapsuleStack",
    "FilterbankRead",
    "FilterbankWrite",
    "Length",
    "Mask",
    "PrimaryCaps",
    "RoutingCaps",
    "squash",
]
