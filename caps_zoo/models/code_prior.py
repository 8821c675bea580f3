"""An autoregressive prior over the code maps of the CV-VAE family: a
PixelCNN (van den Oord, Kalchbrenner & Kavukcuoglu 2016, "Pixel Recurrent
Neural Networks"; as the Keras VQ-VAE example fits one to its codes).

The autoencoders of ``caps_zoo.models.capsule_vector_vae`` assign one of
``num_codes`` codes to every position of an 8x8 map (``vq_vae``: the nearest
codebook vector; ``cv_vae``: the winning parent capsule). ``CodePrior``
models those maps in raster order, ``p(c) = prod_k p(c_k | c_<k)``::

    vq = caps_zoo.load("vq_vae", ...)                      # or cv_vae
    codes = vq.predict(images)["codes"]                   # int32 (n, 8, 8)
    prior = CodePrior(num_codes=16)
    prior.compile(optimizer=keras.optimizers.Adam(1e-3))
    prior.fit(codes, batch_size=64, epochs=...)
    maps = prior.sample(16, seed=0)                       # int32 (16, 8, 8)
    images = vq.decode_codes(maps)                        # vq_vae: its codebook decodes a map

The family's models hold their own prior and fit it in one call
(``model.fit_prior(images)``, then ``model.sample(n)``); a cv_vae's codes
name parent capsules routed per image, so its samples draw the parent
poses from a ``GaussianPrior`` (below) fitted to the training images'.

The network: an embedding of the codes, a mask-"A" convolution (it sees
only the positions before the centre), ``num_layers`` residual mask-"B"
blocks (they also see the centre, which by then holds only what came
before it), and a 1x1 convolution to ``num_codes`` logits per position. The
logits at position ``k`` therefore depend on the codes before ``k`` alone
(the test checks it on the whole model). Like every PixelCNN of stacked
masked convolutions it has a blind spot above and to the right: with
kernel ``k`` the row above is seen up to ``k // 2`` columns to the right,
the row above that up to ``2 (k // 2)``, and so on (5x5, position (4, 2):
(3, 5..7) and (2, 7) are not seen; depth does not help). Gated PixelCNN's
vertical and horizontal stacks remove it; this is the plain PixelCNN of the
Keras example.

A prior is fitted per autoencoder: it is no zoo model of its own, and is
not in the registry.
"""

import numbers

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from caps_zoo import checks
from caps_zoo.models.base import LossTermsModel

MASK_TYPES = ("A", "B")



def _kernel_size_pair(kernel_size):
    """``(height, width)`` of an int or a pair of ints, both odd and >= 1, or
    a ValueError: a masked kernel needs a centre tap."""
    pair = (kernel_size, kernel_size) if checks.is_integer(kernel_size) else tuple(kernel_size)
    if len(pair) != 2 or not all(checks.is_integer(size) and size >= 1 and size % 2 == 1 for size in pair):
        raise ValueError(f"kernel_size must be an odd int >= 1 or a pair of them (a masked kernel needs a "
                         f"centre tap); got {kernel_size!r}.")
    return tuple(int(size) for size in pair)


def causal_mask(kernel_size, mask_type):
    """The ``(height, width)`` float32 mask of a masked convolution's kernel.

    1 at the taps before the centre in raster order (the rows above, and the
    centre row's taps to the left); the centre itself is 1 for mask "B" and 0
    for mask "A"; the taps after it are 0.
    """
    if mask_type not in MASK_TYPES:
        raise ValueError(f"mask_type must be one of {MASK_TYPES}; got {mask_type!r}.")
    height, width = _kernel_size_pair(kernel_size)
    mask = np.zeros((height, width), np.float32)
    centre_row, centre_column = height // 2, width // 2
    mask[:centre_row] = 1.0
    mask[centre_row, :centre_column] = 1.0
    if mask_type == "B":
        mask[centre_row, centre_column] = 1.0
    return mask


@keras.saving.register_keras_serializable(package="caps_zoo")
class MaskedConv2D(keras.layers.Layer):
    """A stride-1, "same"-padded convolution whose kernel is masked to the
    taps at and before the centre in raster order (``causal_mask``).

    The mask multiplies the kernel on every call, inside the computation:
    the gradient at a masked tap is exactly 0, and weights loaded or
    assigned with non-zero masked taps are still left out. (The Keras
    example's ``kernel.assign(kernel * mask)`` before each convolution
    convolves with the variable itself: the optimizer moves the masked taps
    after every step, the saved kernel holds them, and inference writes a
    variable.) The mask is a constant of ``kernel_size`` and ``mask_type``,
    not a weight, so no weights file can change it.

    Args:
        filters: output channels.
        kernel_size: an odd int, or a pair of odd ints.
        mask_type: "A" (the first layer: the centre is left out, so that a
            position never sees its own code) or "B" (the layers after:
            the centre, which by then only holds what came before, is in).
    """

    def __init__(self, filters, kernel_size, mask_type="A", kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", use_bias=True, **kwargs):
        super().__init__(**kwargs)
        if not checks.is_integer(filters) or filters < 1:
            raise ValueError(f"filters must be an int >= 1; got {filters!r}.")
        self.filters = int(filters)
        self.kernel_size = _kernel_size_pair(kernel_size)
        self.mask_type = mask_type
        self.mask = causal_mask(self.kernel_size, mask_type)  # validates mask_type
        if not self.mask.any():
            raise ValueError(f"a mask-{mask_type} kernel of size {self.kernel_size} has no tap left "
                             "(mask A leaves out a 1x1 kernel's only one); use kernel_size >= 3.")
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.use_bias = bool(use_bias)

    def build(self, input_shape):
        if len(input_shape) != 4 or input_shape[-1] is None:
            raise ValueError(f"MaskedConv2D '{self.name}' expects feature maps (batch, height, width, "
                             f"channels) with known channels; got shape {tuple(input_shape)}.")
        self.kernel = self.add_weight(name="kernel", shape=(*self.kernel_size, int(input_shape[-1]), self.filters),
                                      initializer=self.kernel_initializer)
        self.bias = (self.add_weight(name="bias", shape=(self.filters,), initializer=self.bias_initializer)
                     if self.use_bias else None)

    def masked_kernel(self):
        """The kernel as the convolution uses it: masked taps are 0."""
        kernel = ops.convert_to_tensor(self.kernel)  # autocast under a mixed policy
        return kernel * ops.cast(self.mask[:, :, None, None], kernel.dtype)

    def call(self, inputs):
        outputs = ops.conv(inputs, self.masked_kernel(), strides=1, padding="same")
        if self.bias is not None:
            outputs = outputs + self.bias
        return outputs

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.filters)

    def get_config(self):
        config = super().get_config()
        config.update(
            filters=self.filters,
            kernel_size=self.kernel_size,
            mask_type=self.mask_type,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            bias_initializer=keras.initializers.serialize(self.bias_initializer),
            use_bias=self.use_bias,
        )
        return config


def _code_dtype_error(what, num_codes, dtype):
    return ValueError(
        f"{what} must be integer code ids in [0, {num_codes - 1}]; got dtype {dtype}. "
        "Codes are an autoencoder's predict(images)['codes'] (int32); a float map is not cast, since "
        "3.7 would silently become code 3.")


def check_code_values(codes, num_codes, what):
    """Raise a ValueError unless concrete ``codes`` lie in [0, num_codes)."""
    if not checks.is_concrete(codes):
        return
    array = np.asarray(codes)
    if array.size == 0:
        return
    low, high = int(array.min()), int(array.max())
    if low < 0 or high >= num_codes:
        raise ValueError(f"{what} must be code ids in [0, {num_codes - 1}]; got min {low}, max {high}.")


def assert_code_values(codes, num_codes, what):
    """``codes`` after an in-graph check that they lie in [0, num_codes)
    (``InvalidArgumentError`` with the same wording when the batch runs). An
    id of 16 looked up on a GPU embeds as zeros instead of failing."""
    codes = tf.convert_to_tensor(codes)
    wide = tf.cast(codes, tf.int64)
    # min/max of an empty batch are the dtype's extremes: an empty batch passes.
    inside = tf.logical_or(tf.equal(tf.size(wide), 0),
                           (tf.reduce_min(wide) >= 0) & (tf.reduce_max(wide) < num_codes))
    check = tf.debugging.Assert(inside, [f"{what} must be code ids in [0, {num_codes - 1}]; got min",
                                         tf.reduce_min(wide), "max", tf.reduce_max(wide)])
    with tf.control_dependencies([check]):
        return tf.identity(codes)


def seed_generator(seed):
    """``seed`` for a sequence of draws: an int becomes a local
    ``keras.random.SeedGenerator`` (the same seed gives the same sequence,
    whatever was drawn before); a generator or None is passed through."""
    if seed is None or isinstance(seed, keras.random.SeedGenerator):
        return seed
    if not checks.is_integer(seed):
        raise ValueError(f"seed must be an int, a keras.random.SeedGenerator or None; got {seed!r}.")
    return keras.random.SeedGenerator(int(seed))


@keras.saving.register_keras_serializable(package="caps_zoo")
class CodePrior(LossTermsModel):
    """A PixelCNN over code maps (module docstring).

    ``call(codes)`` takes integer codes ``(batch, *map_shape)`` and returns
    float32 logits ``(batch, *map_shape, num_codes)``: at each position, the
    distribution of its code given the codes before it in raster order.
    Trained (``fit``) on code maps alone, no labels, on ``code_nll``: the
    per-example negative log-likelihood of the map in nats (the sum over
    positions of the cross-entropy of the logits).

    Args:
        num_codes: the autoencoder's code count (16 for vq_vae and cv_vae).
        map_shape: ``(height, width)`` of the code maps, (8, 8).
        filters: channels of the embedding and every hidden layer.
        num_layers: residual mask-B blocks after the mask-A convolution.
        kernel_size: of the masked convolutions (odd, >= 3).
    """

    LOSS_TERMS = ("code_nll",)

    def __init__(self, num_codes, map_shape=(8, 8), filters=64, num_layers=4, kernel_size=5, **kwargs):
        super().__init__(**kwargs)
        if not checks.is_integer(num_codes) or num_codes < 1:
            raise ValueError(f"num_codes must be an int >= 1; got {num_codes!r}.")
        map_shape = tuple(map_shape)
        if len(map_shape) != 2 or not all(checks.is_integer(size) and size >= 1 for size in map_shape):
            raise ValueError(f"map_shape must be (height, width), two ints >= 1; got {map_shape!r}.")
        for name, value, low in (("filters", filters, 1), ("num_layers", num_layers, 0)):
            if not checks.is_integer(value) or value < low:
                raise ValueError(f"{name} must be an int >= {low}; got {value!r}.")
        if not checks.is_integer(kernel_size) or kernel_size < 3 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be an odd int >= 3 (mask A of a 1x1 kernel sees nothing); "
                             f"got {kernel_size!r}.")
        self.num_codes = int(num_codes)
        self.map_shape = tuple(int(size) for size in map_shape)
        self.filters = int(filters)
        self.num_layers = int(num_layers)
        self.kernel_size = int(kernel_size)
        # An embedding is a one-hot times a matrix: the same model as a
        # one-hot into the first convolution, without the (h, w, K) tensor.
        self.embedding = keras.layers.Embedding(self.num_codes, self.filters, name="embedding")
        self.input_conv = MaskedConv2D(self.filters, self.kernel_size, "A", name="input_conv")
        # Block l: h + mix_l(relu(masked_l(relu(h)))). The skips keep the
        # mask-A layer's features (what the neighbours before were) one add
        # away from the logits at any depth.
        self.block_convs = [MaskedConv2D(self.filters, self.kernel_size, "B", name=f"block_{index}_masked")
                            for index in range(self.num_layers)]
        self.block_mixes = [keras.layers.Conv2D(self.filters, 1, name=f"block_{index}_mix")
                            for index in range(self.num_layers)]
        self.hidden = keras.layers.Conv2D(self.filters, 1, activation="relu", name="hidden")
        self.head = keras.layers.Conv2D(self.num_codes, 1, name="logits")
        self.build()

    def build(self, input_shape=None):
        if self.built:  # also called by a .keras load after __init__ built it
            return
        features = (None, *self.map_shape, self.filters)
        self.embedding.build((None, *self.map_shape))
        self.input_conv.build(features)
        for masked, mix in zip(self.block_convs, self.block_mixes):
            masked.build(features)
            mix.build(features)
        self.hidden.build(features)
        self.head.build(features)
        self.built = True

    # -- the inputs ------------------------------------------------------------------

    def _what(self):
        return f"{self.name}: codes"

    def check_codes(self, codes):
        """``codes`` as a tensor, or a clear ValueError unless they are
        integers of shape ``(batch, *map_shape)`` (and, when concrete, ids in
        [0, num_codes)). Traced values are left to ``checked_codes`` (the
        steps), so that the call holds no Assert ops."""
        if not (tf.is_tensor(codes) or isinstance(codes, keras.KerasTensor)):
            codes = np.asarray(codes)
        dtype = keras.backend.standardize_dtype(codes.dtype)
        if not dtype.startswith(("int", "uint")):
            raise _code_dtype_error(self._what(), self.num_codes, dtype)
        expected = (None, *self.map_shape)
        codes = checks.assert_shape(
            codes, expected, f"{self.name} expects code maps of shape {checks.describe_shape(expected)} "
                             f"with ids in [0, {self.num_codes - 1}]")
        check_code_values(codes, self.num_codes, self._what())
        return codes

    def checked_codes(self, codes):
        """``codes`` after ``check_codes`` and, traced, an in-graph check of
        their values."""
        codes = self.check_codes(codes)
        if isinstance(codes, keras.KerasTensor) or checks.is_concrete(codes):
            return codes  # symbolic: nothing to check; concrete: checked above
        return assert_code_values(codes, self.num_codes, self._what())

    def unpack_batch(self, data):
        # Not ZooModel's: the batches are code maps, not images.
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        if sample_weight is not None:
            raise ValueError(f"{type(self).__name__} does not support sample weights: its loss is the "
                             "batch mean of its loss terms.")
        if y is not None:
            raise ValueError(f"{self.name} trains and evaluates on code maps alone (x = codes, no labels: "
                             "the codes are their own targets); got (x, y) batches.")
        return self.checked_codes(x), None

    def check_call_inputs(self, x):
        return self.checked_codes(x)

    # -- the network ---------------------------------------------------------------------

    def call(self, codes, training=False):
        codes = self.check_codes(codes)
        features = self.input_conv(self.embedding(ops.cast(codes, "int32")))
        for masked, mix in zip(self.block_convs, self.block_mixes):
            features = features + mix(masked(ops.relu(features)))
        # float32 logits under every policy: the softmax and the NLL need them.
        return ops.cast(self.head(self.hidden(ops.relu(features))), "float32")

    def code_nll(self, codes, logits):
        """Per-example ``-log p(codes)`` in nats, ``(batch,)``: the sum over
        positions of the cross-entropy of ``logits``."""
        per_position = ops.sparse_categorical_crossentropy(ops.cast(codes, "int32"), logits, from_logits=True)
        return ops.sum(ops.reshape(per_position, (ops.shape(per_position)[0], -1)), axis=-1)

    def forward_with_loss_terms(self, x, y, training):
        logits = self(x, training=training)
        return {"logits": logits}, {"code_nll": self.code_nll(x, logits)}

    # -- evaluation and sampling ---------------------------------------------------------

    def log_likelihood(self, codes, batch_size=256):
        """Per-example ``log p(codes)`` in nats, numpy float32 ``(n,)``."""
        codes = self.check_codes(codes)
        batch_size = checks.check_count("batch_size", batch_size)
        results = [ops.convert_to_numpy(-self.code_nll(codes[start:start + batch_size],
                                                       self(codes[start:start + batch_size], training=False)))
                   for start in range(0, int(codes.shape[0]), batch_size)]
        return np.concatenate(results) if results else np.zeros((0,), np.float32)

    def sample(self, n, seed=None, temperature=1.0, verbose=0):
        """``n`` code maps drawn position by position in raster order:
        int32 numpy ``(n, *map_shape)``, one forward pass per position.

        ``seed``: an int (the same seed draws the same maps), a
        ``keras.random.SeedGenerator`` (advanced by the draws), or None
        (Keras' global generator: ``keras.utils.set_random_seed``).
        ``temperature`` divides the logits (< 1: sharper). ``verbose=1``
        shows a progress bar over the positions.
        """
        n = checks.check_count("n", n)
        if (isinstance(temperature, bool) or not isinstance(temperature, numbers.Real)
                or not np.isfinite(temperature) or temperature <= 0):
            raise ValueError(f"temperature must be a finite number > 0; got {temperature!r}.")
        seed = seed_generator(seed)
        height, width = self.map_shape
        codes = np.zeros((n, height, width), np.int32)
        progress = keras.utils.Progbar(height * width, unit_name="position") if verbose else None
        for index in range(height * width):
            row, column = divmod(index, width)
            # The not yet drawn positions hold 0: the logits at (row, column)
            # do not depend on them.
            # predict_on_batch: Keras' compiled predict function, one trace
            # for the whole loop (eager calls cost twice as much for a small prior).
            logits = self.predict_on_batch(codes)[:, row, column, :] / float(temperature)
            draws = keras.random.categorical(logits, 1, seed=seed, dtype="int32")
            codes[:, row, column] = ops.convert_to_numpy(draws)[:, 0]
            if progress is not None:
                progress.update(index + 1)
        return codes

    def serving_endpoints(self):
        """``code_logits``: int32 codes ``(batch, *map_shape)`` to ``{"logits":
        (batch, *map_shape, num_codes)}`` (float32)."""

        def code_logits(codes):
            return {"logits": self(self.checked_codes(codes), training=False)}

        codes = tf.TensorSpec([None, *self.map_shape], tf.int32, name="codes")
        return {"code_logits": (code_logits, [codes])}

    def get_config(self):
        config = super().get_config()
        config.update(num_codes=self.num_codes, map_shape=self.map_shape, filters=self.filters,
                      num_layers=self.num_layers, kernel_size=self.kernel_size)
        return config


@keras.saving.register_keras_serializable(package="caps_zoo")
class GaussianPrior(keras.layers.Layer):
    """A full-covariance Gaussian over ``dim``-vectors, fitted by maximum
    likelihood (``fit``) and sampled (``sample``).

    What it is for: a ``cv_vae``'s codes name parent capsules whose poses are
    routed per image, so a sampled code map needs poses too. This prior
    draws them, flattened (``num_parents x parent_dim`` numbers), from the
    Gaussian of the training images' poses, independently of the code map
    (a crude joint: the PixelCNN over codes does not see the poses, nor the
    poses the codes). Its mean and Cholesky factor are non-trainable
    weights, so they save and load with the model.
    """

    def __init__(self, dim, jitter=1e-5, **kwargs):
        super().__init__(**kwargs)
        if not checks.is_integer(dim) or dim < 1:
            raise ValueError(f"dim must be an int >= 1; got {dim!r}.")
        if not checks.is_real(jitter) or not jitter >= 0:
            raise ValueError(f"jitter must be a number >= 0; got {jitter!r}.")
        self.dim = int(dim)
        self.jitter = float(jitter)
        self.build()

    def build(self, input_shape=None):
        if self.built:
            return
        self.mean = self.add_weight(name="mean", shape=(self.dim,), initializer="zeros",
                                    trainable=False, autocast=False)
        self.scale_tril = self.add_weight(name="scale_tril", shape=(self.dim, self.dim),
                                          initializer="identity", trainable=False, autocast=False)
        self.built = True

    def fit(self, vectors):
        """Set the mean and covariance to those of ``vectors`` ``(n, dim)``
        (n >= 2, finite); ``jitter`` times the mean variance is added to the
        diagonal, so that a rank-deficient set still factors."""
        vectors = np.asarray(vectors, np.float64)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim or len(vectors) < 2:
            raise ValueError(f"GaussianPrior '{self.name}' fits on (n >= 2, {self.dim}) vectors; "
                             f"got shape {vectors.shape}.")
        if not np.isfinite(vectors).all():
            raise ValueError(f"GaussianPrior '{self.name}': the vectors hold NaN or inf.")
        mean = vectors.mean(axis=0)
        covariance = np.cov(vectors, rowvar=False).reshape(self.dim, self.dim)
        covariance += np.eye(self.dim) * self.jitter * max(float(np.trace(covariance)) / self.dim, 1e-12)
        self.mean.assign(mean.astype(np.float32))
        self.scale_tril.assign(np.linalg.cholesky(covariance).astype(np.float32))

    def sample(self, n, seed=None):
        """``n`` draws, float32 tensor ``(n, dim)``; ``seed`` as
        ``keras.random.normal``'s (an int or a ``SeedGenerator``)."""
        noise = keras.random.normal((checks.check_count("n", n), self.dim), seed=seed)
        return self.mean[None, :] + ops.matmul(noise, ops.transpose(self.scale_tril))

    def get_config(self):
        config = super().get_config()
        config.update(dim=self.dim, jitter=self.jitter)
        return config
