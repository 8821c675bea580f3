"""Shared Keras layers of the zoo."""

from caps_zoo.layers.autoencoder_blocks import (
    AttentionBlock,
    ConvDecoder,
    ConvEncoder,
    Downsample,
    PatchDiscriminator,
    ResnetBlock,
    Upsample,
)
from caps_zoo.layers.capsule import CapsuleStack, Length, Mask, PrimaryCaps, RoutingCaps, squash
from caps_zoo.layers.capsule_quantizer import CapsuleQuantizer
from caps_zoo.layers.code_usage import CodeUsage, code_statistics
from caps_zoo.layers.filterbank import FilterbankRead, FilterbankWrite
from caps_zoo.layers.vector_quantizer import VectorQuantizer

__all__ = [
    "AttentionBlock",
    "ConvDecoder",
    "ConvEncoder",
    "Downsample",
    "PatchDiscriminator",
    "ResnetBlock",
    "Upsample",
    "CapsuleQuantizer",
    "CapsuleStack",
    "CodeUsage",
    "FilterbankRead",
    "FilterbankWrite",
    "Length",
    "Mask",
    "PrimaryCaps",
    "RoutingCaps",
    "VectorQuantizer",
    "code_statistics",
    "squash",
]
