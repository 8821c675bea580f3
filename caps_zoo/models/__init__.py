"""One module per paper; importing them fills the registry."""

from caps_zoo.models import deep_capsule_network
from caps_zoo.models.deep_capsule_network import CapsuleNetwork

__all__ = ["CapsuleNetwork", "deep_capsule_network"]
