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

Overlapping digits (MultiMNIST, Sabour et al. Sec. 6): with
``digits_per_image=2`` (and ``image_shape=(36, 36, 1)``) the model trains
on ``caps_zoo.data.load("multi_mnist", ...)``'s ``(merged, targets)``: the
margin loss on the 2-hot label, and the decoder run once per digit, masked
by that digit's class, each reconstruction against its own source digit
(``reconstruction_weight`` x squared error each, summed). It logs
``pair_accuracy`` (both longest capsules are the two labels;
``caps_zoo.overlapping_digits``) and ``at_least_one_accuracy`` (weaker, not
comparable with the papers' figures) instead of ``accuracy``, and
``reconstruction`` is ``(b, 2, h, w, c)``: one image per digit, the two
longest capsules (highest first) or the given ``labels`` ``(b, 2)``.
"""

import keras
import tensorflow as tf
from keras import ops

from caps_zoo import checks, losses, overlapping_digits
from caps_zoo.layers import CapsuleStack, Length, Mask
from caps_zoo.models.base import ClassAccuracy, LossTermsModel
from caps_zoo.models.builder import build_compiled
from caps_zoo.registry import register_model

PAPER = "deep-capsule-network.txt"
CLASS_CAPSULE_INIT_SCALE = 0.3


@keras.saving.register_keras_serializable(package="caps_zoo")
class CapsuleNetwork(ClassAccuracy, LossTermsModel):
    """Convolutions, primary capsules, routing stages (one ``CapsuleStack``), decoder.

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
        digits_per_image: 1, or 2 for overlapping pairs (MultiMNIST; see the
            module's docstring).

    Loss terms (per image, logged under these names): ``margin_loss`` (eq. 4
    of Sabour et al., summed over classes) and ``reconstruction_squared_error``
    (``reconstruction_weight`` x the sum of squared pixel errors of the
    decoder, the term as it enters the loss); ``loss`` is their sum.
    """

    LOSS_TERMS = ("margin_loss", "reconstruction_squared_error")

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
        digits_per_image=1,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if digits_per_image not in (1, 2):
            raise ValueError(
                f"digits_per_image must be 1 (one digit per image) or 2 (overlapping pairs, "
                f"MultiMNIST); got {digits_per_image!r}."
            )
        self.digits_per_image = int(digits_per_image)
        self.image_shape = tuple(int(v) for v in image_shape)
        self.decoder_units = tuple(int(v) for v in decoder_units)
        self.reconstruction_weight = float(reconstruction_weight)
        # The stack checks and normalises the capsule arguments.
        self.capsules = CapsuleStack(
            conv_filters=conv_filters,
            conv_kernel_sizes=conv_kernel_sizes,
            primary_capsule_types=primary_capsule_types,
            primary_capsule_dim=primary_capsule_dim,
            primary_kernel_size=primary_kernel_size,
            primary_strides=primary_strides,
            routing_capsules=routing_capsules,
            routing_iterations=routing_iterations,
            stop_gradient_in_routing=stop_gradient_in_routing,
            last_stage_init_scale=CLASS_CAPSULE_INIT_SCALE,
            last_stage_name="digit_caps",
            name="capsules",
        )
        self.num_classes = self.capsules.num_capsules
        self.length = Length(name="length")
        self.mask = Mask(name="mask")
        pixels = self.image_shape[0] * self.image_shape[1] * self.image_shape[2]
        self.decoder = keras.Sequential(
            [
                keras.layers.Dense(units, activation="relu", name=f"hidden{index + 1}")
                for index, units in enumerate(self.decoder_units)
            ]
            # float32 output: the reconstruction error sums a squared error per
            # pixel (784 at 28x28, 1,296 per digit at 36x36).
            + [keras.layers.Dense(pixels, activation="sigmoid", dtype="float32", name="pixels")],
            name="decoder",
        )
        self.build_accuracy()

    # The stack's layers, by the names the rest of the zoo uses.
    convs = property(lambda self: self.capsules.convs)
    primary_caps = property(lambda self: self.capsules.primary_caps)
    routing_stages = property(lambda self: self.capsules.routing_stages)
    routing_capsules = property(lambda self: self.capsules.routing_capsules)
    routing_iterations = property(lambda self: self.capsules.routing_iterations)
    stop_gradient_in_routing = property(lambda self: self.capsules.stop_gradient_in_routing)

    def current_weight_path(self, stored_path):
        # Until 2026-12-01 the convolutions, primary capsules and routing
        # stages were the model's own layers; now they are the CapsuleStack's.
        if stored_path.startswith(("conv", "primary_caps/", "routing_caps", "digit_caps/")):
            return f"{self.capsules.name}/{stored_path}"
        return stored_path

    # -- building and the forward pass -------------------------------------

    def build(self, input_shape=None):
        shape = (None,) + self.image_shape
        self.capsules.build(shape)
        shape = self.capsules.compute_output_shape(shape)
        self.decoder.build((None, shape[1] * shape[2]))
        self.built = True

    def encode(self, images, training=False):
        """Images to class capsules ``(batch, num_classes, capsule_dim)``."""
        images = self.check_images(images)
        return self.capsules(images, training=training)

    def decode(self, poses, labels=None):
        """Reconstruct images from the capsule of ``labels`` (or the longest)."""
        pixels = self.decoder(self.mask(poses, labels))
        return ops.reshape(pixels, (-1,) + self.image_shape)

    def decode_each(self, poses, label_ids):
        """One reconstruction per digit, ``(b, k, h, w, c)``: the decoder run
        once for every column of ``label_ids`` ``(b, k)``, masked by it."""
        return ops.stack(
            [self.decode(poses, label_ids[:, k]) for k in range(label_ids.shape[-1])], axis=1
        )

    def call(self, images, training=False, labels=None):
        poses = self.encode(images, training=training)
        scores = self.length(poses)
        if self.digits_per_image == 1:
            reconstruction = self.decode(poses, labels)
        else:
            if labels is None:
                labels = overlapping_digits.predicted_digits(scores, self.digits_per_image)
            reconstruction = self.decode_each(poses, labels)
        return {"scores": scores, "poses": poses, "reconstruction": reconstruction}

    def serving_endpoints(self):
        """``{"classify": (function, input_signature)}`` for ``caps_zoo.export``."""

        def classify(images):
            outputs = dict(self(images, training=False))
            if self.digits_per_image == 1:
                outputs["classes"] = tf.argmax(outputs["scores"], axis=-1, output_type=tf.int64)
            else:  # (b, 2): the two longest capsules, the longer first
                classes = overlapping_digits.predicted_digits(outputs["scores"], self.digits_per_image)
                outputs["classes"] = tf.cast(classes, tf.int64)
            return outputs

        images = tf.TensorSpec([None, *self.image_shape], tf.float32, name="images")
        return {"classify": (classify, [images])}

    # -- training: the step is LossTermsModel's ---------------------------------

    def forward_with_loss_terms(self, images, labels, training):
        """Outputs (the decoder masked by the true ``labels``) and the loss terms."""
        if self.digits_per_image > 1:
            return self._pairs_with_loss_terms(images, labels, training)
        labels = self.require_labels(labels)
        outputs = self(images, training=training, labels=labels)
        return outputs, {
            "margin_loss": losses.margin_loss(labels, outputs["scores"]),
            "reconstruction_squared_error": losses.reconstruction_squared_error(
                images, outputs["reconstruction"], self.reconstruction_weight
            ),
        }

    # -- overlapping digits (digits_per_image=2) ------------------------------

    def require_pair_targets(self, targets):
        """``{"label_ids": (b, 2), "digits": (b, 2, h, w, c)}``, checked: what
        ``caps_zoo.data.load("multi_mnist", ...)`` gives as targets."""
        k, shape = self.digits_per_image, self.image_shape
        if not isinstance(targets, dict) or not {"label_ids", "digits"} <= set(targets):
            got = sorted(targets) if isinstance(targets, dict) else type(targets).__name__
            raise ValueError(
                f"{self.name} (digits_per_image={k}) trains and evaluates on (images, targets) with "
                f"targets['label_ids'] (batch, {k}) and targets['digits'] (batch, {k}, "
                f"{', '.join(map(str, shape))}), as caps_zoo.data.load('multi_mnist', ...) gives them; "
                f"got {got}."
            )
        label_ids = targets["label_ids"]
        if tuple(label_ids.shape[1:]) != (k,):
            raise ValueError(
                f"{self.name}: targets['label_ids'] must have shape (batch, {k}); got {tuple(label_ids.shape)}."
            )
        digits = checks.assert_shape(
            targets["digits"], (None, k, *shape),
            f"{self.name}: targets['digits'] (the source digits) must have shape "
            f"{checks.describe_shape((None, k, *shape))}")
        label_ids = checks.assert_class_ids(label_ids, self.num_classes, f"{self.name}: targets['label_ids']")
        return {"label_ids": ops.cast(label_ids, "int32"), "digits": ops.cast(digits, "float32")}

    def _pairs_with_loss_terms(self, images, targets, training):
        targets = self.require_pair_targets(targets)
        label_ids, digits = targets["label_ids"], targets["digits"]
        outputs = self(images, training=training, labels=label_ids)
        present = ops.sum(ops.one_hot(label_ids, self.num_classes), axis=1)  # the 2-hot label
        reconstruction = sum(
            losses.reconstruction_squared_error(
                digits[:, k], outputs["reconstruction"][:, k], self.reconstruction_weight
            )
            for k in range(self.digits_per_image)
        )
        return outputs, {
            "margin_loss": losses.margin_loss(present, outputs["scores"]),
            "reconstruction_squared_error": reconstruction,
        }

    def build_accuracy(self):
        if self.digits_per_image == 1:
            return super().build_accuracy()
        self.accuracy_tracker = overlapping_digits.PairAccuracy()
        self.at_least_one_tracker = overlapping_digits.AtLeastOneAccuracy()

    @property
    def extra_metrics(self):
        if self.digits_per_image == 1:
            return super().extra_metrics
        return [self.accuracy_tracker, self.at_least_one_tracker]

    def update_extra_metrics(self, images, labels, outputs):
        if self.digits_per_image == 1:
            return super().update_extra_metrics(images, labels, outputs)
        for tracker in self.extra_metrics:
            tracker.update_state(labels["label_ids"], outputs["scores"])

    def get_config(self):
        config = super().get_config()
        stack = self.capsules.get_config()
        config.update(
            image_shape=self.image_shape,
            **{key: stack[key] for key in (
                "conv_filters", "conv_kernel_sizes", "primary_capsule_types",
                "primary_capsule_dim", "primary_kernel_size", "primary_strides",
                "routing_capsules", "routing_iterations", "stop_gradient_in_routing",
            )},
            decoder_units=self.decoder_units,
            reconstruction_weight=self.reconstruction_weight,
            digits_per_image=self.digits_per_image,
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


@register_model(paper=PAPER, pretrained=("mnist", "fashion_mnist", "multi_mnist"))
def capsnet(**overrides):
    """CapsNet of Sabour et al. (2017) for 28x28 images; 8.2M parameters."""
    return build_compiled(CapsuleNetwork, "capsnet", CAPSNET_CONFIG, overrides)


@register_model(paper=PAPER, pretrained=("mnist", "multi_mnist"))
def deep_capsnet(**overrides):
    """Deep Capsule Network: two convolutions, two stages of dynamic routing."""
    return build_compiled(CapsuleNetwork, "deep_capsnet", DEEP_CAPSNET_CONFIG, overrides)
