"""Shared Keras layers of the zoo."""

from caps_zoo.layers.capsule import Length, Mask, PrimaryCaps, RoutingCaps, squash

__all__ = ["Length", "Mask", "PrimaryCaps", "RoutingCaps", "squash"]
