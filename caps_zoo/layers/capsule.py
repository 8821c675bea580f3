"""Capsule building blocks (Sabour, Frosst & Hinton 2017, "Dynamic Routing
Between Capsules").

Shapes follow one convention throughout: a capsule tensor is
``(batch, num_capsules, capsule_dim)``.

Under a mixed precision policy only the convolution of ``PrimaryCaps`` runs
in bfloat16. squash, ``RoutingCaps`` (its prediction matmul ``u_hat = W u``
included, see ``RoutingCaps.predictions``), ``Length`` and ``Mask`` take and
give float32 (``autocast=False``): the softmax over parents and the lengths
near the margins 0.1 / 0.9, which the loss looks at, lose too much in
bfloat16.
"""

import keras
import tensorflow as tf
from keras import ops

SQUASH_EPSILON = 1e-7


@keras.saving.register_keras_serializable(package="caps_zoo")
def squash(vectors, axis=-1):
    """Squash non-linearity ``v = |s|^2 / (1 + |s|^2) * s / |s|``.

    The norm is ``sqrt(|s|^2 + eps)``, so the value is 0 and the gradient is
    finite (0) at the zero vector, where ``s / |s|`` would give NaN.
    """
    squared_norm = ops.sum(ops.square(vectors), axis=axis, keepdims=True)
    scale = squared_norm / (1.0 + squared_norm) / ops.sqrt(squared_norm + SQUASH_EPSILON)
    return vectors * scale


def _check_rank(layer, shape, rank, what):
    if len(shape) != rank:
        raise ValueError(
            f"{layer.__class__.__name__} '{layer.name}' expects {what} of rank {rank}, "
            f"got shape {tuple(shape)}."
        )


def _kernel_gradient_as_convolution(conv):
    """Whether ``strided_conv2d`` (plus the bias) may stand in for the Keras
    ``conv``: valid padding, a stride above 1, no dilation, one group,
    channels last, a bias and no activation or kernel constraint (PrimaryCaps'
    own convolution)."""
    return (
        conv.padding == "valid" and max(conv.strides) > 1 and conv.dilation_rate == (1, 1)
        and conv.groups == 1 and conv.data_format == "channels_last" and conv.use_bias
        and conv.activation is keras.activations.linear and conv.kernel_constraint is None
        and conv.bias_constraint is None
    )


def strided_conv2d(inputs, kernel, strides):
    """``tf.nn.conv2d(inputs, kernel, strides, "VALID")`` (NHWC) whose kernel
    gradient is computed as a convolution of its own.

    ``dL/dW[kh, kw, ci, co] = sum_{b, y, x} in[b, s*y + kh, s*x + kw, ci]
    dL/dout[b, y, x, co]`` is a stride-1 convolution of the input, laid out
    ``(ci, h, w, batch)``, with ``dL/dout`` laid out ``(y, x, batch, co)``
    as the filter, dilated by the stride. For strided convolutions oneDNN's
    own kernel gradient (Conv2DBackpropFilter) is slow: for capsnet's
    PrimaryCaps (256@9x9, stride 2, on 20x20x256, batch 128, both cores)
    0.45 -> 0.26 s in float32 and 0.37 -> 0.13 s in bfloat16; deep_capsnet's
    (5x5, stride 2, on 16x16) 0.14 -> 0.08 and 0.08 -> 0.05 s. For stride 1
    it is slower (up to 4x: 1-channel inputs, 512 -> 256 at 5x5), hence the
    stride condition of the layers that use it. The input gradient stays
    TensorFlow's. Results equal the plain convolution's to float rounding
    (relative 3e-6 in float32).
    """
    stride_h, stride_w = (strides, strides) if isinstance(strides, int) else tuple(strides)

    @tf.custom_gradient
    def convolution(x, w):
        def gradient(upstream):
            input_gradient = tf.raw_ops.Conv2DBackpropInput(
                input_sizes=tf.shape(x), filter=w, out_backprop=upstream,
                strides=[1, stride_h, stride_w, 1], padding="VALID",
            )
            kernel_h, kernel_w = w.shape[0], w.shape[1]
            out_h, out_w = upstream.shape[1], upstream.shape[2]
            # Rows and columns past the last window get no gradient.
            used = x[:, : stride_h * (out_h - 1) + kernel_h, : stride_w * (out_w - 1) + kernel_w, :]
            kernel_gradient = tf.nn.conv2d(
                tf.transpose(used, (3, 1, 2, 0)), tf.transpose(upstream, (1, 2, 0, 3)),
                strides=1, padding="VALID", dilations=[stride_h, stride_w],
            )  # (ci, kh, kw, co)
            return input_gradient, tf.transpose(kernel_gradient, (1, 2, 0, 3))

        return tf.nn.conv2d(x, w, [1, stride_h, stride_w, 1], "VALID"), gradient

    return convolution(inputs, kernel)


@keras.saving.register_keras_serializable(package="caps_zoo")
class PrimaryCaps(keras.layers.Layer):
    """Convolution whose channels are grouped into capsules, then squashed.

    Input ``(batch, height, width, channels)``; output
    ``(batch, out_height * out_width * num_capsule_types, capsule_dim)``.
    Capsules are ordered position-major (all types at one position, then the
    next position), the order of a reshape of the NHWC convolution output.
    """

    def __init__(
        self,
        num_capsule_types=32,
        capsule_dim=8,
        kernel_size=9,
        strides=2,
        padding="valid",
        kernel_initializer="glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if num_capsule_types < 1 or capsule_dim < 1:
            raise ValueError(
                f"num_capsule_types and capsule_dim must be >= 1, got "
                f"{num_capsule_types} and {capsule_dim}."
            )
        self.num_capsule_types = int(num_capsule_types)
        self.capsule_dim = int(capsule_dim)
        self.kernel_size = kernel_size
        self.strides = strides
        self.padding = padding
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.conv = keras.layers.Conv2D(
            filters=self.num_capsule_types * self.capsule_dim,
            kernel_size=kernel_size,
            strides=strides,
            padding=padding,
            kernel_initializer=self.kernel_initializer,
            dtype=self.dtype_policy,
            name="conv",
        )

    def build(self, input_shape):
        _check_rank(self, input_shape, 4, "images (batch, height, width, channels)")
        self.conv.build(input_shape)

    def convolve(self, inputs, training=None):
        """The convolution's output ``(batch, h, w, types * dim)``, in the
        compute dtype. Training computes the same convolution with a faster
        kernel gradient (``strided_conv2d``); inference calls the Keras
        layer, so exports hold plain convolutions only."""
        conv = self.conv
        if not (training and _kernel_gradient_as_convolution(conv)):
            return conv(inputs)
        dtype = conv.compute_dtype
        features = strided_conv2d(ops.cast(inputs, dtype), ops.cast(conv.kernel, dtype), conv.strides)
        return features + ops.cast(conv.bias, dtype)

    def call(self, inputs, training=None):
        features = self.convolve(inputs, training=training)
        height, width = features.shape[1], features.shape[2]
        capsules = ops.reshape(
            features, (-1, height * width * self.num_capsule_types, self.capsule_dim)
        )
        return squash(ops.cast(capsules, "float32"))

    def compute_output_shape(self, input_shape):
        height, width = self.conv.compute_output_shape(input_shape)[1:3]
        return (input_shape[0], height * width * self.num_capsule_types, self.capsule_dim)

    def compute_output_spec(self, inputs):
        shape = self.compute_output_shape(inputs.shape)
        return keras.KerasTensor(shape, dtype="float32")

    def get_config(self):
        config = super().get_config()
        config.update(
            num_capsule_types=self.num_capsule_types,
            capsule_dim=self.capsule_dim,
            kernel_size=self.kernel_size,
            strides=self.strides,
            padding=self.padding,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
        )
        return config


def _route(u_hat, iterations, stop_gradient):
    """Dynamic routing of predictions ``u_hat`` ``(i, b, j, d)``: ``(b, j, d)``.

    See ``RoutingCaps``. ``iterations`` and ``stop_gradient`` are Python
    values (one trace per setting).
    """
    u_hat_routing = ops.stop_gradient(u_hat) if stop_gradient else u_hat
    # ops.shape gives a tuple of dimensions: no StridedSlice of a shape
    # tensor, which the TFLite converter refuses in this graph.
    logits = ops.zeros(ops.shape(u_hat)[:3], dtype=u_hat.dtype)  # (i, b, j)
    for iteration in range(iterations):
        last = iteration == iterations - 1
        u = u_hat if last else u_hat_routing
        coupling = ops.softmax(logits, axis=-1)  # over parents j
        outputs = squash(ops.sum(coupling[..., None] * u, axis=0))  # (b, j, d)
        if not last:
            logits = logits + ops.sum(u * outputs[None], axis=-1)
    return outputs


# Only the routing sub-graph: whole-model XLA was ~15x slower on CPU (the
# convolutions lose oneDNN). reduce_retracing: the batch size varies.
_route_xla = tf.function(_route, jit_compile=True, reduce_retracing=True)


@keras.saving.register_keras_serializable(package="caps_zoo")
class RoutingCaps(keras.layers.Layer):
    """Fully connected capsule layer with dynamic routing by agreement.

    Every input capsule ``i`` predicts every output capsule ``j``:
    ``u_hat[j|i] = W[i, j] u[i]``. Routing logits ``b[i, j]`` start at zero,
    per example, and for ``r`` iterations:

        c[i, :] = softmax(b[i, :])        # over the parent capsules j
        v[j]    = squash(sum_i c[i, j] u_hat[j|i])
        b[i, j] += u_hat[j|i] . v[j]      # all but the last iteration

    Args:
        num_capsules: number of output (parent) capsules.
        capsule_dim: dimension of each output capsule.
        routing_iterations: ``r >= 1``; with 1 every coupling is ``1 / J``
            (no routing).
        kernel_initializer: default None, a normal init scaled by fan-in,
            times ``init_scale``.
        stop_gradient_in_routing: if True, gradients flow into ``u_hat`` only
            through the last iteration; earlier iterations only decide the
            coupling coefficients (as in several reference implementations;
            cheaper and often more stable).
    """

    def __init__(
        self,
        num_capsules,
        capsule_dim,
        routing_iterations=3,
        stop_gradient_in_routing=False,
        kernel_initializer=None,
        init_scale=1.0,
        **kwargs,
    ):
        kwargs.setdefault("autocast", False)  # routing is float32; see module doc
        super().__init__(**kwargs)
        if int(routing_iterations) < 1:
            raise ValueError(f"routing_iterations must be >= 1, got {routing_iterations}.")
        if num_capsules < 1 or capsule_dim < 1:
            raise ValueError(
                f"num_capsules and capsule_dim must be >= 1, got {num_capsules} and {capsule_dim}."
            )
        self.num_capsules = int(num_capsules)
        self.capsule_dim = int(capsule_dim)
        self.routing_iterations = int(routing_iterations)
        self.stop_gradient_in_routing = bool(stop_gradient_in_routing)
        self.init_scale = float(init_scale)
        # None: a normal init scaled to the layer's fan-in (see build).
        self.kernel_initializer = (
            None if kernel_initializer is None else keras.initializers.get(kernel_initializer)
        )

    def build(self, input_shape):
        _check_rank(self, input_shape, 3, "capsules (batch, num_capsules, capsule_dim)")
        self.num_input_capsules, self.input_capsule_dim = int(input_shape[1]), int(input_shape[2])
        initializer = self.kernel_initializer
        if initializer is None:
            # With uniform first-pass coupling 1/num_capsules, s_j averages
            # num_input_capsules predictions; this stddev gives |s_j| ~ |u_i|,
            # so capsule lengths start away from 0, where squash's gradient
            # vanishes (a fixed 0.01 leaves a second routing stage dead).
            initializer = keras.initializers.RandomNormal(
                stddev=self.init_scale
                * self.num_capsules
                / (self.num_input_capsules * self.capsule_dim) ** 0.5
            )
        # Stored (inputs, in_dim, parents * out_dim) so that the prediction
        # step is one batched matmul over the input capsules.
        self.kernel = self.add_weight(
            name="kernel",
            shape=(
                self.num_input_capsules,
                self.input_capsule_dim,
                self.num_capsules * self.capsule_dim,
            ),
            initializer=initializer,
            # Never cast to the compute dtype: routing is float32 (module
            # doc). Keras autocasts a mixed-policy layer's variables when it
            # is called outside a model, whatever the layer's `autocast`.
            autocast=False,
        )

    def predictions(self, inputs):
        """``u_hat`` laid out ``(input_capsules, batch, parents, parent_dim)``, float32.

        The input-capsule axis leads so that the matmul batches over it with
        no transpose of the large ``u_hat`` tensor. The matmul runs in
        float32 under every policy: with K = 8 it is memory-bound, and
        oneDNN's bfloat16 batched matmul of these small matrices measured
        slower here than float32's (124 against 76 ms forward for capsnet's
        1152 x (128 x 8 @ 8 x 160), one core), before the cast back to
        float32 that routing needs (another 66 ms).
        """
        inputs_by_capsule = ops.transpose(ops.cast(inputs, "float32"), (1, 0, 2))  # (i, b, d_in)
        u_hat = ops.matmul(inputs_by_capsule, ops.cast(self.kernel, "float32"))
        return ops.reshape(
            u_hat, (self.num_input_capsules, -1, self.num_capsules, self.capsule_dim)
        )

    def call(self, inputs, training=None):
        u_hat = self.predictions(inputs)
        # Training runs the iterations as one XLA cluster: it fuses every
        # broadcast product over u_hat with its sum, so no temporary of
        # u_hat's size is written, forward or backward (capsnet, one core:
        # routing forward+backward 1.40 s -> 0.23 s). Inference keeps plain
        # TensorFlow ops, so SavedModel and TFLite exports hold no XLA
        # clusters (TF Serving and the TFLite converter need none).
        route = _route_xla if training else _route
        return route(u_hat, self.routing_iterations, self.stop_gradient_in_routing)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_capsules, self.capsule_dim)

    def compute_output_spec(self, inputs):
        return keras.KerasTensor(self.compute_output_shape(inputs.shape), dtype="float32")

    def get_config(self):
        config = super().get_config()
        config.update(
            num_capsules=self.num_capsules,
            capsule_dim=self.capsule_dim,
            routing_iterations=self.routing_iterations,
            stop_gradient_in_routing=self.stop_gradient_in_routing,
            init_scale=self.init_scale,
            kernel_initializer=(
                None
                if self.kernel_initializer is None
                else keras.initializers.serialize(self.kernel_initializer)
            ),
        )
        return config


@keras.saving.register_keras_serializable(package="caps_zoo")
class Length(keras.layers.Layer):
    """Capsule lengths ``|v|``: ``(batch, n, d) -> (batch, n)``, class scores."""

    def __init__(self, **kwargs):
        kwargs.setdefault("autocast", False)  # float32 lengths; see module doc
        super().__init__(**kwargs)

    def call(self, capsules):
        capsules = ops.cast(capsules, "float32")
        return ops.sqrt(ops.sum(ops.square(capsules), axis=-1) + SQUASH_EPSILON)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1])

    def compute_output_spec(self, capsules):
        return keras.KerasTensor(self.compute_output_shape(capsules.shape), dtype="float32")


@keras.saving.register_keras_serializable(package="caps_zoo")
class Mask(keras.layers.Layer):
    """Zero all capsules but one and flatten: the decoder's input.

    ``call(capsules, labels=None)``: with ``labels`` (training) the true
    class's capsule is kept: integer ids ``(batch,)`` or ``(batch, 1)``, or
    a one-/multi-hot ``(batch, n)`` (several digits: all their capsules are
    kept); without, the longest capsule is. Output ``(batch, n * d)``.
    """

    def __init__(self, **kwargs):
        kwargs.setdefault("autocast", False)  # float32 poses; see module doc
        super().__init__(**kwargs)

    def call(self, capsules, labels=None):
        capsules = ops.cast(capsules, "float32")
        num_capsules = capsules.shape[1]
        if labels is None:
            # tf.argmax, not ops.argmax: Keras' TF version adds a -0.0 guard
            # (BitwiseAnd) that is no TFLite builtin; a sum of squares is
            # never -0.0.
            labels = tf.argmax(ops.sum(ops.square(capsules), axis=-1), axis=-1)
        if len(labels.shape) == 2 and labels.shape[-1] == num_capsules:
            mask = ops.cast(labels, "float32")
        else:
            mask = ops.one_hot(ops.cast(ops.reshape(labels, (-1,)), "int32"), num_capsules)
        masked = capsules * mask[..., None]
        return ops.reshape(masked, (-1, num_capsules * capsules.shape[2]))

    def compute_output_shape(self, input_shape, labels_shape=None):
        return (input_shape[0], input_shape[1] * input_shape[2])

    def compute_output_spec(self, capsules, labels=None):
        return keras.KerasTensor(self.compute_output_shape(capsules.shape), dtype="float32")


@keras.saving.register_keras_serializable(package="caps_zoo")
class CapsuleStack(keras.layers.Layer):
    """ReLU convolutions -> ``PrimaryCaps`` -> fully connected ``RoutingCaps`` stages.

    The block every capsule model of the zoo is built on: CapsNet and the
    Deep Capsule Network (images in, class capsules out) and both capsule
    networks of RCN (its encoder on images, its decoder on a map made from
    z, through transposed convolutions). Input ``(batch, height, width,
    channels)``; output ``(batch, num_capsules, capsule_dim)`` of the last
    stage, float32.

    Args:
        conv_filters / conv_kernel_sizes: the ReLU convolutions before the
            primary capsules (stride 1, valid padding, He-normal init).
        conv_transpose: transposed convolutions instead (valid padding: each
            grows the map by ``kernel_size - 1``).
        primary_capsule_types / primary_capsule_dim / primary_kernel_size /
            primary_strides: the ``PrimaryCaps`` layer.
        routing_capsules: ``((num_capsules, capsule_dim), ...)`` per routing
            stage.
        routing_iterations: iterations per stage (an int for all), each >= 1.
        stop_gradient_in_routing: see ``RoutingCaps``.
        last_stage_init_scale: ``init_scale`` of the last stage. Class
            capsules start short (below the margin m- = 0.1, with 0.3), so
            the absent-class term of the margin loss does not first push
            every capsule to zero, where squash's gradient dies.
        last_stage_name: the last stage's layer name (earlier stages are
            ``routing_caps1``, ``routing_caps2``, ...).
    """

    def __init__(
        self,
        conv_filters=(256,),
        conv_kernel_sizes=(9,),
        conv_transpose=False,
        primary_capsule_types=32,
        primary_capsule_dim=8,
        primary_kernel_size=9,
        primary_strides=2,
        routing_capsules=((10, 16),),
        routing_iterations=3,
        stop_gradient_in_routing=False,
        last_stage_init_scale=1.0,
        last_stage_name="digit_caps",
        **kwargs,
    ):
        super().__init__(**kwargs)
        routing_capsules = tuple(tuple(int(v) for v in stage) for stage in routing_capsules)
        if not routing_capsules or any(len(stage) != 2 for stage in routing_capsules):
            raise ValueError(
                "routing_capsules needs at least one stage, each (num_capsules, capsule_dim); "
                f"got {routing_capsules}."
            )
        if isinstance(routing_iterations, int):
            routing_iterations = (routing_iterations,) * len(routing_capsules)
        routing_iterations = tuple(int(r) for r in routing_iterations)
        if len(conv_filters) != len(conv_kernel_sizes):
            raise ValueError(
                f"conv_filters {tuple(conv_filters)} and conv_kernel_sizes "
                f"{tuple(conv_kernel_sizes)} must have the same length."
            )
        if len(routing_iterations) != len(routing_capsules):
            raise ValueError(
                f"routing_iterations {routing_iterations} needs one entry per routing "
                f"stage ({len(routing_capsules)} stages: {routing_capsules})."
            )
        self.conv_filters = tuple(int(v) for v in conv_filters)
        self.conv_kernel_sizes = tuple(int(v) for v in conv_kernel_sizes)
        self.conv_transpose = bool(conv_transpose)
        self.primary_capsule_types = int(primary_capsule_types)
        self.primary_capsule_dim = int(primary_capsule_dim)
        self.primary_kernel_size = int(primary_kernel_size)
        self.primary_strides = int(primary_strides)
        self.routing_capsules = routing_capsules
        self.routing_iterations = routing_iterations
        self.stop_gradient_in_routing = bool(stop_gradient_in_routing)
        self.last_stage_init_scale = float(last_stage_init_scale)
        self.last_stage_name = str(last_stage_name)

        conv_class = keras.layers.Conv2DTranspose if self.conv_transpose else keras.layers.Conv2D
        # He initialisation by each output's fan-in. Keras reads a transposed
        # kernel (k, k, filters, inputs) as if it were a convolution's, so its
        # "fan_in" is k*k*filters; an output of a stride-1 transposed
        # convolution sums k*k*inputs terms, which Keras calls fan_out. With
        # he_normal the decoder of RCN shrank its signal 2-6x per layer.
        initializer = (
            keras.initializers.VarianceScaling(2.0, "fan_out", "truncated_normal")
            if self.conv_transpose else "he_normal"
        )
        self.convs = [
            conv_class(
                filters, size, activation="relu", kernel_initializer=initializer,
                dtype=self.dtype_policy, name=f"conv{index + 1}",
            )
            for index, (filters, size) in enumerate(zip(self.conv_filters, self.conv_kernel_sizes))
        ]
        self.primary_caps = PrimaryCaps(
            self.primary_capsule_types,
            self.primary_capsule_dim,
            kernel_size=self.primary_kernel_size,
            strides=self.primary_strides,
            dtype=self.dtype_policy,
            name="primary_caps",
        )
        names = [f"routing_caps{i + 1}" for i in range(len(routing_capsules) - 1)]
        names.append(self.last_stage_name)
        last = len(routing_capsules) - 1
        self.routing_stages = [
            RoutingCaps(
                num_capsules,
                capsule_dim,
                routing_iterations=iterations,
                stop_gradient_in_routing=self.stop_gradient_in_routing,
                init_scale=self.last_stage_init_scale if index == last else 1.0,
                name=name,
            )
            for index, ((num_capsules, capsule_dim), iterations, name) in enumerate(
                zip(routing_capsules, routing_iterations, names)
            )
        ]

    @property
    def num_capsules(self):
        return self.routing_capsules[-1][0]

    @property
    def capsule_dim(self):
        return self.routing_capsules[-1][1]

    def feature_shape(self, input_shape):
        """The shape the convolutions give ``PrimaryCaps``."""
        shape = tuple(input_shape)
        for conv in self.convs:
            shape = conv.compute_output_shape(shape)
        return shape

    def build(self, input_shape):
        _check_rank(self, input_shape, 4, "feature maps (batch, height, width, channels)")
        shape = tuple(input_shape)
        for conv in self.convs:
            conv.build(shape)
            shape = conv.compute_output_shape(shape)
        self.primary_caps.build(shape)
        shape = self.primary_caps.compute_output_shape(shape)
        for stage in self.routing_stages:
            stage.build(shape)
            shape = stage.compute_output_shape(shape)

    def call(self, inputs, training=None):
        features = inputs
        for conv in self.convs:
            features = conv(features)
        capsules = self.primary_caps(features, training=training)
        for stage in self.routing_stages:
            capsules = stage(capsules, training=training)
        return capsules

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_capsules, self.capsule_dim)

    def compute_output_spec(self, inputs, training=None):
        return keras.KerasTensor(self.compute_output_shape(inputs.shape), dtype="float32")

    def get_config(self):
        config = super().get_config()
        config.update(
            conv_filters=self.conv_filters,
            conv_kernel_sizes=self.conv_kernel_sizes,
            conv_transpose=self.conv_transpose,
            primary_capsule_types=self.primary_capsule_types,
            primary_capsule_dim=self.primary_capsule_dim,
            primary_kernel_size=self.primary_kernel_size,
            primary_strides=self.primary_strides,
            routing_capsules=self.routing_capsules,
            routing_iterations=self.routing_iterations,
            stop_gradient_in_routing=self.stop_gradient_in_routing,
            last_stage_init_scale=self.last_stage_init_scale,
            last_stage_name=self.last_stage_name,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["routing_capsules"] = tuple(tuple(stage) for stage in config["routing_capsules"])
        return cls(**config)
