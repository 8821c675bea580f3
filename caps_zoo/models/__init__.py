"""One module per paper; importing them fills the registry."""

from caps_zoo.models import convolutional_recurrent_writer, deep_capsule_network
from caps_zoo.models.convolutional_recurrent_writer import RecurrentWriter
from caps_zoo.models.deep_capsule_network import CapsuleNetwork

__all__ = [
    "CapsuleNetwork",
    "RecurrentWriter",
    "convolutional_recurrent_writer",
    "deep_capsule_network",
]
