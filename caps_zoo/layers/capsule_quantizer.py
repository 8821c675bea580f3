"""The capsule bottleneck of CV-VAE / CVGAN (Pucci et al., ICIAP 2022), in
two modes: what the public code computes, and what the paper says.

The paper's idea: replace VQ-VAE's codebook with a capsule layer that
"clusters the encoder outputs considering the agreement among capsules".
The public code (a fork of taming-transformers' VQGAN) computes something
else; ``mode="reference"`` reproduces it, at our sizes, with each of its
accidents as a documented option, so that the row "as published" of a
comparison is the published computation:

- the encoder map goes through ``primary_capsule_dim`` (16) convolutions
  (3x3, stride 2, zero padding 2) of ``primary_channels`` (32) channels each,
  stacked into one capsule per (position, channel) whose components are the
  16 convolutions; squashed;
- one parent capsule (``num_parents=1``, ``parent_dim=64``) predicted by a
  weight per input capsule;
- 3 routing iterations with logits shared by the whole batch (the agreement
  is averaged over the batch: ``shared_logits=True``), the softmax taken over
  the input capsules instead of over the parents (``softmax_over="inputs"``;
  over parents a single parent would take every coupling to 1), and a squash
  applied to each component of the parent on its own
  (``elementwise_squash=True``: the squash runs over an axis of size 1);
- what reaches the decoder is not the parent: per input capsule the scalar
  ``|c_i W_i u_i|``, a map of ``primary_channels`` channels brought back to
  the encoder's resolution by a 2x2 stride-2 transposed convolution (and a
  crop of 1). The parent pose is discarded and nothing is quantized: the
  bottleneck is continuous, and no code or codebook loss exists;
- its optimizer never sees these weights: ``trainable_capsules=False``
  reproduces capsules that stay at their initialisation (the convolutions
  and the parent weights; the transposed convolution is trained there).

``mode="routing"`` (the zoo's default) does what the paper describes:
routing by agreement clusters the encoder's vectors, one input capsule per
spatial position, onto ``num_parents`` parent capsules, per example, softmax
over the parents (Sabour et al.'s routing). Parent ``j`` predicts from every
position with one transform ``W_j`` shared by all positions (a weight per
position, as the reference has, would tie a cluster to a place). The decoder
gets, per position, what the coupling assigns:

- ``assignment="soft"``: ``sum_j c_ij v_j``, the coupling-weighted parent
  poses (continuous: the coupling itself can carry the image);
- ``assignment="hard"``: ``v_k`` with ``k = argmax_j c_ij`` forward, the soft
  value's gradient backward (straight-through): a discrete code per position
  plus the example's ``num_parents`` parent poses.

Either way ``codes`` (the argmax parent per position) and ``assignment``
(the coupling) are returned, so that code usage and perplexity can be
counted (``caps_zoo.layers.CodeUsage``) and a prior fitted over the codes.
Neither mode has auxiliary loss terms (``loss_term_names`` is empty): the
routing decides the clusters, with no codebook to pull.
"""

import keras
import tensorflow as tf
from keras import ops

from caps_zoo.layers.capsule import SQUASH_EPSILON, squash

MODES = ("routing", "reference")
ASSIGNMENTS = ("soft", "hard")
SOFTMAX_AXES = ("parents", "inputs")
# What each mode fixes unless told otherwise (the reference: the public
# code's computation; routing: Sabour et al.'s).
MODE_DEFAULTS = {
    "reference": {"num_parents": 1, "parent_dim": 64, "shared_logits": True,
                  "softmax_over": "inputs", "elementwise_squash": True},
    "routing": {"num_parents": 16, "parent_dim": 16, "shared_logits": False,
                "softmax_over": "parents", "elementwise_squash": False},
}


def elementwise_squash(values):
    """The squash of each component on its own: ``s |s| / (1 + s^2)``
    (the public code's squash over an axis of size 1)."""
    squared = ops.square(values)
    return values * squared / (1.0 + squared) / ops.sqrt(squared + SQUASH_EPSILON)


def agreement_routing(u_hat, iterations, softmax_over="parents", shared_logits=False,
                      squash_elementwise=False):
    """Routing by agreement of predictions ``u_hat`` ``(b, i, j, d)``.

    Returns ``(parents (b, j, d), coupling (b, i, j))``, the coupling of the
    last iteration. Logits start at zero; each iteration but the last adds
    the agreement ``u_hat . v`` (averaged over the batch when
    ``shared_logits``: one set of logits for every example).
    """
    batch_logits = 1 if shared_logits else ops.shape(u_hat)[0]
    logits = ops.zeros((batch_logits, *ops.shape(u_hat)[1:3]), dtype=u_hat.dtype)
    axis = 2 if softmax_over == "parents" else 1
    squash_parents = elementwise_squash if squash_elementwise else squash
    for iteration in range(iterations):
        coupling = ops.softmax(logits, axis=axis)
        parents = squash_parents(ops.einsum("bij,bijd->bjd", ops.broadcast_to(
            coupling, ops.shape(u_hat)[:3]), u_hat))
        if iteration < iterations - 1:
            agreement = ops.einsum("bijd,bjd->bij", u_hat, parents)
            if shared_logits:
                agreement = ops.mean(agreement, axis=0, keepdims=True)
            logits = logits + agreement
    return parents, ops.broadcast_to(coupling, ops.shape(u_hat)[:3])


@keras.saving.register_keras_serializable(package="caps_zoo")
class CapsuleQuantizer(keras.layers.Layer):
    """The CV-VAE bottleneck (module docstring): a feature map
    ``(batch, height, width, channels)`` in, a dict out.

    Both modes return ``quantized`` (what the decoder gets; routing:
    ``(b, h, w, parent_dim)``, reference: ``(b, h, w, output_channels)``) and
    ``coupling``. Routing mode adds ``codes`` (int32 ``(b, h, w)``),
    ``assignment`` (the coupling as ``(b, h, w, num_parents)``) and
    ``parents`` (``(b, num_parents, parent_dim)``).

    Args:
        mode: "routing" (the paper's idea) or "reference" (the public code).
        num_parents, parent_dim: the parent capsules (routing default 16 of
            16; reference 1 of 64).
        routing_iterations: >= 1 (3 in both).
        assignment: routing mode: "hard" (straight-through) or "soft".
        primary_capsule_dim, primary_channels: reference mode's primary
            capsules (16 convolutions of 32 channels).
        output_channels: reference mode: channels of the map to the decoder
            (default: the input's).
        trainable_capsules: False keeps the capsule weights at their
            initialisation (the reference's untrained capsules).
        shared_logits, softmax_over, elementwise_squash: the routing's
            variants (defaults: the mode's, ``MODE_DEFAULTS``).
    """

    def __init__(self, mode="routing", num_parents=None, parent_dim=None, routing_iterations=3,
                 assignment="hard", primary_capsule_dim=16, primary_channels=32, output_channels=None,
                 trainable_capsules=True, shared_logits=None, softmax_over=None,
                 elementwise_squash=None, **kwargs):
        kwargs.setdefault("autocast", False)  # routing in float32, as RoutingCaps
        super().__init__(**kwargs)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
        defaults = MODE_DEFAULTS[mode]
        self.mode = mode
        self.num_parents = int(defaults["num_parents"] if num_parents is None else num_parents)
        self.parent_dim = int(defaults["parent_dim"] if parent_dim is None else parent_dim)
        self.shared_logits = bool(defaults["shared_logits"] if shared_logits is None else shared_logits)
        self.softmax_over = defaults["softmax_over"] if softmax_over is None else softmax_over
        self.elementwise_squash = bool(
            defaults["elementwise_squash"] if elementwise_squash is None else elementwise_squash)
        self.routing_iterations = int(routing_iterations)
        self.assignment = assignment
        self.primary_capsule_dim = int(primary_capsule_dim)
        self.primary_channels = int(primary_channels)
        self.output_channels = None if output_channels is None else int(output_channels)
        self.trainable_capsules = bool(trainable_capsules)
        for name in ("num_parents", "parent_dim", "routing_iterations", "primary_capsule_dim",
                     "primary_channels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if self.output_channels is not None and self.output_channels < 1:
            raise ValueError(f"output_channels must be >= 1, got {self.output_channels}.")
        if assignment not in ASSIGNMENTS:
            raise ValueError(f"assignment must be one of {ASSIGNMENTS}, got {assignment!r}.")
        if self.softmax_over not in SOFTMAX_AXES:
            raise ValueError(f"softmax_over must be one of {SOFTMAX_AXES}, got {self.softmax_over!r}.")

    @property
    def num_codes(self):
        """The number of discrete codes per position (routing mode: the parents)."""
        return self.num_parents

    @property
    def has_codes(self):
        """Whether ``call`` returns ``codes`` (routing mode)."""
        return self.mode == "routing"

    @property
    def loss_term_names(self):
        """The per-example loss terms ``call`` returns: none (module docstring)."""
        return ()

    @property
    def codes_need_parents(self):
        """True: a code names one of the image's own parent capsules, whose
        poses routing computes per image; a code map decodes only with
        ``parents`` ``(b, num_parents, parent_dim)`` beside it (``lookup``)."""
        return True

    def lookup(self, codes, parents):
        """The ``quantized`` map of routing mode's hard assignment: at each
        position of ``codes`` ``(b, h, w)``, the pose of the parent it names
        in that image's ``parents`` ``(b, num_parents, parent_dim)``; float32
        ``(b, h, w, parent_dim)``. (``call``'s ``quantized`` with
        ``assignment="hard"``, given its own ``codes`` and ``parents``.)"""
        if self.mode != "routing":
            raise ValueError(f"CapsuleQuantizer '{self.name}': reference mode assigns no codes, so there "
                             "is nothing to look up.")
        if parents is None:
            raise ValueError(f"CapsuleQuantizer '{self.name}': a code map decodes only with the parents it "
                             "indexes (routed per image): pass parents (batch, num_parents, parent_dim).")
        one_hot = ops.one_hot(ops.cast(codes, "int32"), self.num_parents, dtype="float32")
        return ops.einsum("bhwj,bjd->bhwd", one_hot, ops.cast(parents, "float32"))

    def build(self, input_shape):
        if len(input_shape) != 4 or any(size is None for size in input_shape[1:]):
            raise ValueError(f"CapsuleQuantizer '{self.name}' expects a feature map (batch, height, width, "
                             f"channels) of known size, got shape {tuple(input_shape)}.")
        height, width, channels = (int(size) for size in input_shape[1:])
        if self.mode == "routing":
            # One transform per parent, shared by every position (see module doc);
            # scaled so that |u_hat| ~ |u| at the start.
            self.kernel = self.add_weight(
                name="kernel", shape=(self.num_parents, channels, self.parent_dim),
                initializer=keras.initializers.RandomNormal(stddev=channels ** -0.5),
                trainable=self.trainable_capsules, autocast=False)
            return
        self.padding = keras.layers.ZeroPadding2D(2, dtype=self.dtype_policy, name="padding")
        self.primary = keras.layers.Conv2D(
            self.primary_capsule_dim * self.primary_channels, 3, strides=2,
            trainable=self.trainable_capsules, dtype=self.dtype_policy, name="primary")
        padded = (None, height + 4, width + 4, channels)
        self.primary.build(padded)
        primary_shape = self.primary.compute_output_shape(padded)
        self.primary_grid = (int(primary_shape[1]), int(primary_shape[2]))
        num_inputs = self.primary_grid[0] * self.primary_grid[1] * self.primary_channels
        # torch.randn in the public code: a standard normal per input capsule.
        self.kernel = self.add_weight(
            name="kernel", shape=(num_inputs, self.num_parents, self.primary_capsule_dim, self.parent_dim),
            initializer=keras.initializers.RandomNormal(stddev=1.0),
            trainable=self.trainable_capsules, autocast=False)
        self.upsample = keras.layers.Conv2DTranspose(
            self.output_channels or channels, 2, strides=2, dtype=self.dtype_policy, name="upsample")
        self.upsample.build((None, *self.primary_grid, self.primary_channels))
        upsampled = self.upsample.compute_output_shape((None, *self.primary_grid, self.primary_channels))
        # The crop of ConvTranspose2d(padding=1): back to the encoder's size
        # when it is 2 * grid - 2 (16 -> 9 -> 16 there, 8 -> 5 -> 8 here).
        self.crop = (int(upsampled[1]) - height, int(upsampled[2]) - width)
        if min(self.crop) < 0 or self.crop[0] % 2 or self.crop[1] % 2:
            raise ValueError(f"reference mode cannot bring a {height}x{width} map back to its size "
                             f"(the transposed convolution gives {upsampled[1]}x{upsampled[2]}).")

    def routed(self, u_hat):
        return agreement_routing(u_hat, self.routing_iterations, self.softmax_over, self.shared_logits,
                                 self.elementwise_squash)

    def call(self, features, training=None):
        features = ops.cast(features, "float32")
        if self.mode == "reference":
            return self._reference(features)
        batch, height, width, channels = ops.shape(features)
        inputs = squash(ops.reshape(features, (batch, height * width, channels)))
        u_hat = ops.einsum("bic,jcd->bijd", inputs, ops.cast(self.kernel, "float32"))
        parents, coupling = self.routed(u_hat)
        # tf.argmax: Keras' argmax handles -0.0 with a BitwiseAnd that TFLite lacks.
        codes = tf.argmax(coupling, axis=-1, output_type=tf.int32)
        soft = ops.einsum("bij,bjd->bid", coupling, parents)
        if self.assignment == "soft":
            assigned = soft
        else:
            hard = ops.einsum("bij,bjd->bid", ops.one_hot(codes, self.num_parents, dtype="float32"), parents)
            assigned = soft + ops.stop_gradient(hard - soft)
        grid = (batch, height, width)
        return {
            "quantized": ops.reshape(assigned, (*grid, self.parent_dim)),
            "codes": ops.reshape(codes, grid),
            "assignment": ops.reshape(coupling, (*grid, self.num_parents)),
            "coupling": coupling,
            "parents": parents,
        }

    def _reference(self, features):
        batch = ops.shape(features)[0]
        primary = self.primary(self.padding(features))  # (b, gh, gw, dim * channels), conv-major
        grid_h, grid_w = self.primary_grid
        primary = ops.reshape(primary, (batch, grid_h, grid_w, self.primary_capsule_dim, self.primary_channels))
        # One capsule per (position, channel); its components are the convolutions.
        primary = ops.transpose(primary, (0, 1, 2, 4, 3))
        inputs = squash(ops.reshape(primary, (batch, -1, self.primary_capsule_dim)))
        u_hat = ops.einsum("bic,ijcd->bijd", inputs, ops.cast(self.kernel, "float32"))
        _, coupling = self.routed(u_hat)
        # |c_i u_hat_i| over the parents' components: one scalar per input capsule.
        magnitude = ops.sqrt(ops.sum(ops.square(coupling[..., None] * u_hat), axis=(2, 3)))
        decoded = self.upsample(ops.reshape(magnitude, (batch, grid_h, grid_w, self.primary_channels)))
        crop_h, crop_w = self.crop[0] // 2, self.crop[1] // 2
        decoded = decoded[:, crop_h:ops.shape(decoded)[1] - crop_h, crop_w:ops.shape(decoded)[2] - crop_w]
        return {"quantized": ops.cast(decoded, "float32"), "coupling": coupling}

    def compute_output_spec(self, features, training=None):
        batch, height, width, channels = features.shape
        if self.mode == "reference":
            num_inputs = None if not self.built else int(self.kernel.shape[0])
            return {"quantized": keras.KerasTensor((batch, height, width, self.output_channels or channels)),
                    "coupling": keras.KerasTensor((batch, num_inputs, self.num_parents))}
        positions = height * width
        return {
            "quantized": keras.KerasTensor((batch, height, width, self.parent_dim)),
            "codes": keras.KerasTensor((batch, height, width), dtype="int32"),
            "assignment": keras.KerasTensor((batch, height, width, self.num_parents)),
            "coupling": keras.KerasTensor((batch, positions, self.num_parents)),
            "parents": keras.KerasTensor((batch, self.num_parents, self.parent_dim)),
        }

    def get_config(self):
        config = super().get_config()
        config.update(
            mode=self.mode, num_parents=self.num_parents, parent_dim=self.parent_dim,
            routing_iterations=self.routing_iterations, assignment=self.assignment,
            primary_capsule_dim=self.primary_capsule_dim, primary_channels=self.primary_channels,
            output_channels=self.output_channels, trainable_capsules=self.trainable_capsules,
            shared_logits=self.shared_logits, softmax_over=self.softmax_over,
            elementwise_squash=self.elementwise_squash,
        )
        return config
