"""One module per paper; importing them fills the registry."""

from caps_zoo.models import (
    capsule_vector_vae,
    convolutional_recurrent_writer,
    deep_capsule_network,
    generative_recurrent_adversarial,
    recurrent_capsule_network,
)
from caps_zoo.models.capsule_vector_vae import AdversarialAutoencoder, BottleneckAutoencoder
from caps_zoo.models.convolutional_recurrent_writer import RecurrentWriter
from caps_zoo.models.deep_capsule_network import CapsuleNetwork
from caps_zoo.models.generative_recurrent_adversarial import (
    RecurrentAdversarialNetwork,
    RecurrentCanvasGenerator,
)
from caps_zoo.models.recurrent_capsule_network import RecurrentCapsuleNetwork

__all__ = [
    "AdversarialAutoencoder",
    "BottleneckAutoencoder",
    "CapsuleNetwork",
    "RecurrentAdversarialNetwork",
    "RecurrentCanvasGenerator",
    "RecurrentCapsuleNetwork",
    "RecurrentWriter",
    "capsule_vector_vae",
    "convolutional_recurrent_writer",
    "deep_capsule_network",
    "generative_recurrent_adversarial",
    "recurrent_capsule_network",
]
