"""RCN: the Recurrent Capsule Network, a DRAW that classifies.

Paper: ``shared/papers/recurrent-capsule-network.txt``. No public code
exists; this implementation is the reference. RCN is DRAW (``RecurrentWriter``
with an LSTM encoder) with a capsule network before each LSTM::

    capsules = CapsuleEncoder(x)                         once per image
    x^_t     = x - sigmoid(c_{t-1})
    h_enc_t  = LSTM_enc([capsules, read(x, x^_t, h_dec_{t-1}), h_dec_{t-1}])
    z_t      ~ N(mu(h_enc_t), sigma(h_enc_t))
    h_dec_t  = LSTM_dec(CapsuleDecoder(z_t))
    c_t      = c_{t-1} + write(h_dec_t)

Loss: ``margin_weight`` x margin loss of the encoder's class capsules (m+ 0.9,
m- 0.1, lambda 0.5) + Lx + Lz, in nats (Lx, Lz as DRAW's). The logged
``margin_loss`` is the unweighted capsule loss; ``loss`` is the weighted sum.

What the paper fixes, and where this follows it:

- the encoder is a CapsNet without its connected layers: Conv 256@5x5
  stride 1, a second 5x5 convolution of 128 channels, primary capsules, a
  second capsule layer of class capsules;
- the decoder's capsule network: 2 deconvolutions (128 and 256 channels),
  primary capsules and a final capsule layer, at every step;
- the encoder LSTM reads the capsules, h_dec_{t-1} and its own state.

What it leaves open, and what we chose (each an argument):

- the second 5x5 convolution *is* the primary-capsule convolution (16
  capsule types x 8D = 128 channels, stride 2): the paper's Fig. 4 shows a
  CapsNet, whose second layer is the primary capsules; a separate 128-channel
  convolution before a 256-channel primary layer would cost 4x the MACs
  (327M vs 82M per image) for no stated gain;
- the capsule encoder runs once per image: it sees x, which does not change
  over the T steps, so T runs would compute the same capsules T times;
- the encoder LSTM also reads DRAW's glimpse of x and of the error image
  (``read_images=True``, read 5x5 with attention): "similar to the DRAW
  network", and without it the encoder cannot see what is left to draw;
- the decoder capsule network works on a 3x3x32 map made from z_t by a dense
  layer; its deconvolutions are 3x3 (3 -> 5 -> 7 pixels), its primary
  capsules 8 types x 8D (3x3, stride 2: 72 capsules) and its final layer 10
  capsules of 16D, 2 routing iterations: ~16M multiply-adds per step, since
  it runs T times per image; its flattened capsules are the LSTM's input.
  Measured at initialisation on 256 draws of z: with a 1x1 map and Keras'
  he_normal for the transposed convolutions (which reads their fan-in
  wrongly, see ``CapsuleStack``) the capsules reaching the LSTM had length
  0.007, and a first training run lost z (Lz 1 nat, the mean image's
  likelihood after 10,000 images); with the 3x3 map and He by the right
  fan-in they have length 0.15 and 20x the gradient with respect to z, and
  still training lost z (Lz 1.02 nats, validation 0.05; validation Lx 210
  nats after one epoch of 10,000 images). So the decoder LSTM reads z_t
  beside the capsules (``decoder_reads_z=True``), as DRAW's reads z_t: the
  capsules are an addition to DRAW's decoder input, not its only channel
  for z (``decoder_reads_z=False`` is the literal reading);
- T = 10, z of 100 (DCRW's), 256 LSTM units (DRAW's); 3 routing iterations
  in the encoder (CapsNet's);
- ``margin_weight`` (default 100): Lx + Lz is ~540 nats at the start and
  ~90 at the end, the margin loss ~0.7 and ~0.01; the weight keeps the
  margin term within an order of magnitude of the bound, so that both
  train the capsule encoder (its choice is measured in the README).
"""

import math

import keras
import tensorflow as tf
from keras import ops

from caps_zoo import losses
from caps_zoo.layers import CapsuleStack, Length
from caps_zoo.models.base import ClassAccuracy
from caps_zoo.models.builder import build_compiled
from caps_zoo.models.convolutional_recurrent_writer import RecurrentWriter
from caps_zoo.registry import register_model

PAPER = "recurrent-capsule-network.txt"
CLASS_CAPSULE_INIT_SCALE = 0.3


@keras.saving.register_keras_serializable(package="caps_zoo")
class RecurrentCapsuleNetwork(ClassAccuracy, RecurrentWriter):
    """RCN: a capsule encoder and a per-step capsule decoder around DRAW's LSTMs.

    Args:
        image_shape, steps, latent_dim, encoder_units, decoder_units,
            read_size, write_attention, write_size, seed: as ``RecurrentWriter``
            (the encoder is always an LSTM; reading is always with attention).
        read_images: the encoder LSTM also reads DRAW's glimpse of x and of
            the error image (False: capsules and h_dec_{t-1} only).
        num_classes / class_capsule_dim: the encoder's class capsules.
        encoder_conv_filters / encoder_conv_kernel_sizes /
            encoder_primary_capsule_types / encoder_primary_capsule_dim /
            encoder_primary_kernel_size / encoder_primary_strides /
            encoder_routing_iterations: the capsule encoder (``CapsuleStack``).
        decoder_conv_filters / decoder_conv_kernel_sizes /
            decoder_primary_* / decoder_capsules / decoder_routing_iterations:
            the capsule decoder, on a ``decoder_map_size`` squared map of
            ``decoder_map_channels`` made from z_t (transposed convolutions).
        decoder_reads_z: the decoder LSTM reads z_t beside the decoder's
            capsules (False: the capsules alone, the paper's literal reading,
            with which training lost z; see the module docstring).
        margin_weight: weight of the margin loss against Lx + Lz.
    """

    LOSS_TERMS = ("margin_loss", "reconstruction_nll", "latent_kl")

    def __init__(
        self,
        image_shape=(28, 28, 1),
        steps=10,
        latent_dim=100,
        encoder_units=256,
        decoder_units=256,
        read_images=True,
        read_size=5,
        write_attention=True,
        write_size=5,
        num_classes=10,
        class_capsule_dim=16,
        encoder_conv_filters=(256,),
        encoder_conv_kernel_sizes=(5,),
        encoder_primary_capsule_types=16,
        encoder_primary_capsule_dim=8,
        encoder_primary_kernel_size=5,
        encoder_primary_strides=2,
        encoder_routing_iterations=3,
        decoder_map_size=3,
        decoder_map_channels=32,
        decoder_conv_filters=(128, 256),
        decoder_conv_kernel_sizes=(3, 3),
        decoder_primary_capsule_types=8,
        decoder_primary_capsule_dim=8,
        decoder_primary_kernel_size=3,
        decoder_primary_strides=2,
        decoder_capsules=(10, 16),
        decoder_routing_iterations=2,
        decoder_reads_z=True,
        margin_weight=100.0,
        seed=None,
        **kwargs,
    ):
        self.read_images = bool(read_images)
        self.decoder_reads_z = bool(decoder_reads_z)
        super().__init__(
            image_shape=image_shape,
            steps=steps,
            latent_dim=latent_dim,
            encoder="lstm",
            encoder_units=encoder_units,
            decoder_units=decoder_units,
            read_attention=True,
            read_size=read_size,
            write_attention=write_attention,
            write_size=write_size,
            seed=seed,
            **kwargs,
        )
        if float(margin_weight) < 0 or not math.isfinite(float(margin_weight)):
            raise ValueError(f"margin_weight must be finite and >= 0, got {margin_weight}.")
        self.num_classes = int(num_classes)
        self.class_capsule_dim = int(class_capsule_dim)
        self.margin_weight = float(margin_weight)
        self.decoder_map_size = int(decoder_map_size)
        self.decoder_map_channels = int(decoder_map_channels)
        self.decoder_capsules = tuple(int(v) for v in decoder_capsules)
        self.capsule_encoder = CapsuleStack(
            conv_filters=encoder_conv_filters,
            conv_kernel_sizes=encoder_conv_kernel_sizes,
            primary_capsule_types=encoder_primary_capsule_types,
            primary_capsule_dim=encoder_primary_capsule_dim,
            primary_kernel_size=encoder_primary_kernel_size,
            primary_strides=encoder_primary_strides,
            routing_capsules=((self.num_classes, self.class_capsule_dim),),
            routing_iterations=encoder_routing_iterations,
            last_stage_init_scale=CLASS_CAPSULE_INIT_SCALE,
            last_stage_name="class_caps",
            name="capsule_encoder",
        )
        self.length = Length(name="length")
        self.decoder_projection = keras.layers.Dense(
            self.decoder_map_size**2 * self.decoder_map_channels, activation="relu",
            name="decoder_projection",
        )
        self.capsule_decoder = CapsuleStack(
            conv_filters=decoder_conv_filters,
            conv_kernel_sizes=decoder_conv_kernel_sizes,
            conv_transpose=True,
            primary_capsule_types=decoder_primary_capsule_types,
            primary_capsule_dim=decoder_primary_capsule_dim,
            primary_kernel_size=decoder_primary_kernel_size,
            primary_strides=decoder_primary_strides,
            routing_capsules=(self.decoder_capsules,),
            routing_iterations=decoder_routing_iterations,
            last_stage_name="decoder_caps",
            name="capsule_decoder",
        )
        self.build_accuracy()

    def make_reader(self):
        # Without read_images the encoder reads no glimpse: no reader at all
        # (its window layer would get no gradient).
        return super().make_reader() if self.read_images else None

    # -- the hooks of RecurrentWriter -------------------------------------------

    def build_image_context(self, images_shape):
        self.capsule_encoder.build(images_shape)
        return self.num_classes * self.class_capsule_dim

    def image_context(self, images, training):
        poses = self.capsule_encoder(images, training=training)
        flat = ops.reshape(poses, (-1, self.num_classes * self.class_capsule_dim))
        return {"capsules": flat}, {"scores": self.length(poses), "poses": poses}

    def encoder_step_inputs(self, glimpse_features, decoder_h, context):
        if glimpse_features is None:
            return [context["capsules"], decoder_h]
        return [context["capsules"], glimpse_features, decoder_h]

    @property
    def _decoder_map_shape(self):
        return (self.decoder_map_size, self.decoder_map_size, self.decoder_map_channels)

    def build_decoder_step_input(self, z_shape):
        self.decoder_projection.build(z_shape)
        self.capsule_decoder.build((z_shape[0], *self._decoder_map_shape))
        num_capsules, capsule_dim = self.decoder_capsules
        return num_capsules * capsule_dim + (z_shape[-1] if self.decoder_reads_z else 0)

    def decoder_step_input(self, z, training):
        z = ops.cast(z, self.compute_dtype)
        features = self.decoder_projection(z)
        capsules = self.capsule_decoder(
            ops.reshape(features, (-1, *self._decoder_map_shape)), training=training
        )
        num_capsules, capsule_dim = self.decoder_capsules
        capsules = ops.cast(ops.reshape(capsules, (-1, num_capsules * capsule_dim)), self.compute_dtype)
        return ops.concatenate([capsules, z], axis=-1) if self.decoder_reads_z else capsules

    # -- classifying ----------------------------------------------------------------

    def classify(self, images):
        """The capsule encoder alone: ``{"scores": (b, classes) capsule lengths,
        "classes": (b,) int64}`` (the recurrence is not run)."""
        images = self.check_images(images)
        scores = self.length(self.capsule_encoder(ops.cast(images, "float32"), training=False))
        return {"scores": scores, "classes": tf.argmax(scores, axis=-1, output_type=tf.int64)}

    def serving_endpoints(self):
        """``classify``, ``generate`` and ``reconstruct`` for ``caps_zoo.export``."""
        endpoints = super().serving_endpoints()
        images = tf.TensorSpec([None, *self.image_shape], tf.float32, name="images")
        return {"classify": (self.classify, [images]), **endpoints}

    # -- training: LossTermsModel's step ---------------------------------------------

    def forward_with_loss_terms(self, images, labels, training):
        """Outputs and the loss terms: the margin loss of the class capsules,
        Lx and Lz (nats per image)."""
        labels = self.require_labels(labels)
        outputs, terms = super().forward_with_loss_terms(images, labels, training)
        return outputs, {"margin_loss": losses.margin_loss(labels, outputs["scores"]), **terms}

    def loss_term_weights(self):
        return {"margin_loss": self.margin_weight}

    def get_config(self):
        config = super().get_config()
        for key in ("encoder", "cnn_filters", "read_attention"):
            config.pop(key)  # fixed for RCN
        encoder, decoder = self.capsule_encoder.get_config(), self.capsule_decoder.get_config()
        config.update(
            read_images=self.read_images,
            num_classes=self.num_classes,
            class_capsule_dim=self.class_capsule_dim,
            encoder_conv_filters=encoder["conv_filters"],
            encoder_conv_kernel_sizes=encoder["conv_kernel_sizes"],
            encoder_primary_capsule_types=encoder["primary_capsule_types"],
            encoder_primary_capsule_dim=encoder["primary_capsule_dim"],
            encoder_primary_kernel_size=encoder["primary_kernel_size"],
            encoder_primary_strides=encoder["primary_strides"],
            encoder_routing_iterations=encoder["routing_iterations"][0],
            decoder_map_size=self.decoder_map_size,
            decoder_map_channels=self.decoder_map_channels,
            decoder_conv_filters=decoder["conv_filters"],
            decoder_conv_kernel_sizes=decoder["conv_kernel_sizes"],
            decoder_primary_capsule_types=decoder["primary_capsule_types"],
            decoder_primary_capsule_dim=decoder["primary_capsule_dim"],
            decoder_primary_kernel_size=decoder["primary_kernel_size"],
            decoder_primary_strides=decoder["primary_strides"],
            decoder_capsules=self.decoder_capsules,
            decoder_routing_iterations=decoder["routing_iterations"][0],
            decoder_reads_z=self.decoder_reads_z,
            margin_weight=self.margin_weight,
        )
        return config


RCN_CONFIG = {}


@register_model(paper=PAPER, pretrained=("mnist",))
def rcn(**overrides):
    """RCN: DRAW with a capsule encoder (classifies) and a capsule decoder per step, T = 10."""
    return build_compiled(RecurrentCapsuleNetwork, "rcn", RCN_CONFIG, overrides)


@register_model(paper=PAPER, pretrained=())
def rcn_no_write_attention(**overrides):
    """RCN writing the whole canvas through a dense layer (no write window)."""
    return build_compiled(
        RecurrentCapsuleNetwork, "rcn_no_write_attention", dict(write_attention=False), overrides
    )
