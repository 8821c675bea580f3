"""One module per paper; importing them fills the registry."""

from caps_zoo.models import (
    convolutional_recurrent_writer,
    deep_capsule_network,
    generative_recurrent_adversarial,
)
from caps_zoo.models.convolutional_recurrent_writer import RecurrentWriter
from caps_zoo.models.deep_capsule_network import CapsuleNetwork
from caps_zoo.models.generative_recurrent_adversarial import (
    RecurrentAdversarialNetwork,
    RecurrentCanvasGenerator,
)

__all__ = [
    "CapsuleNetwork",
    "RecurrentAdversarialNetwork",
    "RecurrentCanvasGenerator",
    "RecurrentWriter",
    "convolutional_recurrent_writer",
    "deep_capsule_network",
    "generative_recurrent_adversarial",
]
