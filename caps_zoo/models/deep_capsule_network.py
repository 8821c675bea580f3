"""CapsNet (Sabour et al. 2017) and the Deep Capsule Network.

Paper: ``shared/papers/deep-capsule-network.txt``. Both models are one class,
``CapsuleNetwork``: a stack of ReLU convolutions, a ``PrimaryCaps`` layer, one
or more fully connected ``RoutingCaps`` stages (the last has one capsule per
class) and a fully connected decoder that reconstructs the image from the
class capsule kept by ``Mask``.

- ``capsnet``: Conv 256@9x9, PrimaryCaps 32 x 8D (9x9, stride 2), 10 x 16D
  digit capsules with 3 routing iterations, decoder 512-1024-784 (8.2M
  parameters).
- ``deep_capsnet`` (the layers of the paper's Table I): Conv1 512@9x9, Conv2 256@5x5,
  PrimaryCaps 32 x 8D (5x5, stride 2; 6x6 positions, 1152 capsules), a
  "primary route" into intermediate capsules, a "secondary route" into the
  10 x 16D digit capsules, the same decoder.

  The paper does not give the intermediate layer's size. We use 16 capsules
  of 12D: the capsule dimension grows 8 -> 12 -> 16 between stages as it
  grows 8 -> 16 in CapsNet, 16 parents (more than the 10 classes) leaves the
  secondary route something to route, and the 1152 x 16 x 8 x 12 primary-route
  transform (1.8M weights) keeps the model near CapsNet's size. Both are
  arguments (``routing_capsules``). Routing iterations default to 2 (primary)
  and 3 (secondary), the most accurate pair of the paper's Figs. 10/11
  (its Table I lists 3 and 3; pass ``routing_iterations=(3, 3)`` for that).

Outputs of ``call`` / ``predict`` (images only; the decoder reconstructs from
the longest capsule): ``{"scores": (b, 10) capsule lengths, "poses":
(b, 10, 16) digit capsules, "reconstruction": (b, 28, 28, 1)}``. Training
masks by the true label instead, as in the paper.
"""

import keras
import tensorflow as tf
from keras import ops

from caps_zoo import losses
from caps_zoo.layers import Length, Mask, PrimaryCaps, RoutingCaps
from caps_zoo.models.builder import build_compiled, check_images
from caps_zoo.registry import register_model

PAPER = "deep-capsule-network.txt"
CLASS_CAPSULE_INIT_SCALE = 0.3


@keras.saving.register_keras_serializable(package="caps_zoo")
class CapsuleNetwork(keras.Model):
    """Convolutions, primary capsules, routing stages, decoder.

    Args:
        image_shape: ``(height, width, channels)`` of the float images in [0, 1].
        conv_filters / conv_kernel_sizes: the ReLU convolutions before the
            primary capsules (stride 1, valid padding).
        primary_capsule_types / primary_capsule_dim / primary_kernel_size /
            primary_strides: the ``PrimaryCaps`` layer.
        routing_capsules: ``((num_capsules, capsule_dim), ...)`` per routing
            stage; the last stage's ``num_capsules`` is the number of classes.
        routing_iterations: iterations per stage, each >= 1.
        stop_gradient_in_routing: see ``RoutingCaps``.
        decoder_units: hidden sizes of the reconstruction decoder.
        reconstruction_weight: weight of the summed squared error.
    """

    def __init__(
        self,
        image_shape=(28, 28, 1),
        conv_filters=(256,),
        conv_kernel_sizes=(9,),
        primary_capsule_types=32,
        primary_capsule_dim=8,
        primary_kernel_size=9,
        primary_strides=2,
        routing_capsules=((10, 16),),
        routing_iterations=(3,),
        stop_gradient_in_routing=False,
        decoder_units=(512, 1024),
        reconstruction_weight=losses.RECONSTRUCTION_WEIGHT,
        **kwargs,
    ):
        super().__init__(**kwargs)
        routing_capsules = tuple(tuple(int(v) for v in stage) for stage in routing_capsules)
        if isinstance(routing_iterations, int):
            routing_iterations = (routing_iterations,) * len(routing_capsules)
        routing_iterations = tuple(int(r) for r in routing_iterations)
        if len(conv_filters) != len(conv_kernel_sizes):
            raise ValueError(
                f"conv_filters {tuple(conv_filters)} and conv_kernel_sizes "
                f"{tuple(conv_kernel_sizes)} must have the same length."
            )
        if not routing_capsules:
            raise ValueError("routing_capsules needs at least one stage.")
        if len(routing_iterations) != len(routing_capsules):
            raise ValueError(
                f"routing_iterations {routing_iterations} needs one entry per routing "
                f"stage ({len(routing_capsules)} stages: {routing_capsules})."
            )
        self.image_shape = tuple(int(v) for v in image_shape)
        self.conv_filters = tuple(int(v) for v in conv_filters)
        self.conv_kernel_sizes = tuple(int(v) for v in conv_kernel_sizes)
        self.primary_capsule_types = int(primary_capsule_types)
        self.primary_capsule_dim = int(primary_capsule_dim)
        self.primary_kernel_size = int(primary_kernel_size)
        self.primary_strides = int(primary_strides)
        self.routing_capsules = routing_capsules
        self.routing_iterations = routing_iterations
        self.stop_gradient_in_routing = bool(stop_gradient_in_routing)
        self.decoder_units = tuple(int(v) for v in decoder_units)
        self.reconstruction_weight = float(reconstruction_weight)
        self.num_classes = routing_capsules[-1][0]

        self.convs = [
            keras.layers.Conv2D(
                filters, size, activation="relu", kernel_initializer="he_normal", name=f"conv{index + 1}"
            )
            for index, (filters, size) in enumerate(zip(self.conv_filters, self.conv_kernel_sizes))
        ]
        self.primary_caps = PrimaryCaps(
            self.primary_capsule_types,
            self.primary_capsule_dim,
            kernel_size=self.primary_kernel_size,
            strides=self.primary_strides,
            name="primary_caps",
        )
        stage_names = [f"routing_caps{i + 1}" for i in range(len(routing_capsules) - 1)]
        stage_names.append("digit_caps")
        self.routing_stages = [
            RoutingCaps(
                num_capsules,
                capsule_dim,
                routing_iterations=iterations,
                stop_gradient_in_routing=self.stop_gradient_in_routing,
                # Class capsules start short (below the margin m- = 0.1), so
                # the absent-class term of the margin loss does not first
                # push every capsule to zero, where squash's gradient dies.
                init_scale=CLASS_CAPSULE_INIT_SCALE if name == "digit_caps" else 1.0,
                name=name,
            )
            for (num_capsules, capsule_dim), iterations, name in zip(
                routing_capsules, routing_iterations, stage_names
            )
        ]
        self.length = Length(name="length")
        self.mask = Mask(name="mask")
        pixels = self.image_shape[0] * self.image_shape[1] * self.image_shape[2]
        self.decoder = keras.Sequential(
            [
                keras.layers.Dense(units, activation="relu", name=f"hidden{index + 1}")
                for index, units in enumerate(self.decoder_units)
            ]
            # float32 output: the reconstruction loss sums 784 squared errors.
            + [keras.layers.Dense(pixels, activation="sigmoid", dtype="float32", name="pixels")],
            name="decoder",
        )

        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.margin_loss_tracker = keras.metrics.Mean(name="margin_loss")
        self.reconstruction_loss_tracker = keras.metrics.Mean(name="reconstruction_loss")
        self.accuracy_tracker = keras.metrics.SparseCategoricalAccuracy(name="accuracy")

    # -- building and the forward pass -------------------------------------

    def build(self, input_shape=None):
        shape = (None,) + self.image_shape
        for conv in self.convs:
            conv.build(shape)
            shape = conv.compute_output_shape(shape)
        self.primary_caps.build(shape)
        shape = self.primary_caps.compute_output_shape(shape)
        for stage in self.routing_stages:
            stage.build(shape)
            shape = stage.compute_output_shape(shape)
        self.decoder.build((None, shape[1] * shape[2]))
        self.built = True

    def encode(self, images, training=False):
        """Images to class capsules ``(batch, num_classes, capsule_dim)``."""
        check_images(self, images)
        features = images
        for conv in self.convs:
            features = conv(features)
        capsules = self.primary_caps(features)
        for stage in self.routing_stages:
            capsules = stage(capsules, training=training)
        return capsules

    def decode(self, poses, labels=None):
        """Reconstruct images from the capsule of ``labels`` (or the longest)."""
        pixels = self.decoder(self.mask(poses, labels))
        return ops.reshape(pixels, (-1,) + self.image_shape)

    def call(self, images, training=False, labels=None):
        poses = self.encode(images, training=training)
        return {
            "scores": self.length(poses),
            "poses": poses,
            "reconstruction": self.decode(poses, labels),
        }

    def serving_endpoints(self):
        """``{"classify": (function, input_signature)}`` for ``caps_zoo.export``."""

        def classify(images):
            outputs = dict(self(images, training=False))
            outputs["classes"] = tf.argmax(outputs["scores"], axis=-1, output_type=tf.int64)
            return outputs

        images = tf.TensorSpec([None, *self.image_shape], tf.float32, name="images")
        return {"classify": (classify, [images])}

    # -- training -----------------------------------------------------------

    @property
    def metrics(self):
        # The model's own losses and accuracy; compile(loss=, metrics=) are
        # not used by train_step.
        return [
            self.loss_tracker,
            self.margin_loss_tracker,
            self.reconstruction_loss_tracker,
            self.accuracy_tracker,
        ]

    def _forward_with_losses(self, images, labels, training):
        outputs = self(images, training=training, labels=labels)
        margin = losses.margin_loss(labels, outputs["scores"])
        reconstruction = losses.reconstruction_loss(
            images, outputs["reconstruction"], self.reconstruction_weight
        )
        return outputs, margin, reconstruction

    def _update_metrics(self, labels, outputs, margin, reconstruction):
        # Unscaled per-replica means: Mean sums totals and counts across
        # replicas, so the reported value is the global batch mean.
        self.loss_tracker.update_state(margin + reconstruction)
        self.margin_loss_tracker.update_state(margin)
        self.reconstruction_loss_tracker.update_state(reconstruction)
        class_ids = labels
        if len(labels.shape) == 2 and labels.shape[-1] == self.num_classes:
            class_ids = ops.argmax(labels, axis=-1)  # one-hot targets
        self.accuracy_tracker.update_state(class_ids, outputs["scores"])
        return {metric.name: metric.result() for metric in self.metrics}

    @staticmethod
    def _unpack(data):
        images, labels, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        if sample_weight is not None:
            raise ValueError(
                "CapsuleNetwork does not support sample weights: its loss is the mean "
                "margin + reconstruction loss over the batch."
            )
        return images, labels

    def train_step(self, data):
        images, labels = self._unpack(data)
        with tf.GradientTape() as tape:
            outputs, margin, reconstruction = self._forward_with_losses(images, labels, training=True)
            loss = ops.mean(margin + reconstruction)
            # The optimizer sums gradients over replicas, so each replica's
            # share of the global mean is its local mean / replica count.
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            scaled_loss = self.optimizer.scale_loss(loss / replicas)
        gradients = tape.gradient(scaled_loss, self.trainable_variables)
        self.optimizer.apply(gradients, self.trainable_variables)
        return self._update_metrics(labels, outputs, margin, reconstruction)

    def test_step(self, data):
        images, labels = self._unpack(data)
        outputs, margin, reconstruction = self._forward_with_losses(images, labels, training=False)
        return self._update_metrics(labels, outputs, margin, reconstruction)

    def get_config(self):
        config = super().get_config()
        config.update(
            image_shape=self.image_shape,
            conv_filters=self.conv_filters,
            conv_kernel_sizes=self.conv_kernel_sizes,
            primary_capsule_types=self.primary_capsule_types,
            primary_capsule_dim=self.primary_capsule_dim,
            primary_kernel_size=self.primary_kernel_size,
            primary_strides=self.primary_strides,
            routing_capsules=self.routing_capsules,
            routing_iterations=self.routing_iterations,
            stop_gradient_in_routing=self.stop_gradient_in_routing,
            decoder_units=self.decoder_units,
            reconstruction_weight=self.reconstruction_weight,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["routing_capsules"] = tuple(tuple(s) for s in config["routing_capsules"])
        return cls(**config)


CAPSNET_CONFIG = dict(
    conv_filters=(256,),
    conv_kernel_sizes=(9,),
    primary_kernel_size=9,
    routing_capsules=((10, 16),),
    routing_iterations=(3,),
)

DEEP_CAPSNET_CONFIG = dict(
    conv_filters=(512, 256),
    conv_kernel_sizes=(9, 5),
    primary_kernel_size=5,
    routing_capsules=((16, 12), (10, 16)),
    routing_iterations=(2, 3),
)


@register_model(paper=PAPER, pretrained=("mnist",))
def capsnet(**overrides):
    """CapsNet of Sabour et al. (2017) for 28x28 images; 8.2M parameters."""
    return build_compiled(CapsuleNetwork, "capsnet", CAPSNET_CONFIG, overrides)


@register_model(paper=PAPER, pretrained=("mnist",))
def deep_capsnet(**overrides):
    """Deep Capsule Network: two convolutions, two stages of dynamic routing."""
    return build_compiled(CapsuleNetwork, "deep_capsnet", DEEP_CAPSNET_CONFIG, overrides)
