"""DRAW and DCRW: recurrent VAEs that draw on a canvas.

Paper: ``shared/papers/dcrw-convolutional-recurrent-writer.txt`` (it restates
DRAW, Gregor et al. 2015). One class, ``RecurrentWriter``, serves both. At
each of T steps, with ``c_0 = 0`` and the decoder state ``h_dec_0 = 0``::

    x^_t    = x - sigmoid(c_{t-1})                     error image
    r_t     = read(x, x^_t, h_dec_{t-1})              FilterbankRead
    h_enc_t = encoder([r_t, h_dec_{t-1}])
    z_t     ~ q(z_t | h_enc_t) = N(mu_t, sigma_t)     mu = W h, sigma = exp(W h)
    h_dec_t = LSTM_dec(h_dec_{t-1}, z_t)
    c_t     = c_{t-1} + write(h_dec_t)                FilterbankWrite

- ``draw``: the encoder is an LSTM (its input ``[r_t, h_dec_{t-1}]``). DRAW's
  MNIST settings: 256 units in both LSTMs, z of 100, T = 64, read 2x2, write
  5x5. ``read_attention=False, write_attention=False`` is DRAW without
  attention (read the whole [x, x^], write through a dense layer).
- ``dcrw``: the encoder is a CNN (Conv 3x3x32, Pool 2x2, Conv 3x3x64, Pool
  2x2) applied each step to the 7x7 glimpse ``r_t`` (x and x^ as two
  channels); its flattened features next to ``h_dec_{t-1}`` are ``h_enc_t``
  (eq. 9). Decoder LSTM of 256 units, write 5x5.
- ``dcrw_no_read_attention``: the paper's variant without attention in read
  (eqs. 29-32): the CNN encodes x once, and every step samples its own
  ``z_t`` from that one ``q(z | h_enc)``.

The paper leaves T and the size of z unstated for DCRW. We use T = 10 (its
Figs. 4 and 5 show the canvas at t = 1, 4, 6 and 10) and z of 100 (DRAW's);
both are arguments.

Losses, in nats per image (``caps_zoo.losses``): ``Lx = -log Bernoulli(x |
sigmoid(c_T))`` and ``Lz = sum_t KL(q(z_t | .) || N(0, I))``; their sum is
the negative variational lower bound. ``x`` must be binary; the data layer's
``binarize`` option makes it so (see the recipe).

Outputs of ``call`` / ``predict`` (images in, one posterior sample of z):
``{"reconstruction": sigmoid(c_T), "canvas_logits": c_T, "latent_kl": Lz
(batch,)}``. ``sample(n)`` draws from the prior and returns the canvas
sequence and the write windows as well. Training logs ``loss`` (Lx + Lz),
``reconstruction_nll`` (Lx) and ``latent_kl`` (Lz), nats per image.

Subclasses (RCN) change what the recurrence reads without copying it,
through four hooks: ``image_context`` (computed once per image: what every
encoder step may read, and outputs to return), ``encoder_step_inputs`` (what
the encoder reads at a step), ``decoder_step_input`` (the block between z_t
and the decoder LSTM), and their ``build_*`` counterparts, which give the
sizes the LSTMs are built for.
"""

import keras
import tensorflow as tf
from keras import ops

from caps_zoo import checks, losses
from caps_zoo.layers import FilterbankRead, FilterbankWrite
from caps_zoo.layers.filterbank import window_box
from caps_zoo.models.base import GenerativeModel, LossTermsModel
from caps_zoo.checks import check_count
from caps_zoo.models.builder import build_compiled, replica_normal
from caps_zoo.registry import register_model

PAPER = "dcrw-convolutional-recurrent-writer.txt"
ENCODERS = ("lstm", "cnn")


@keras.saving.register_keras_serializable(package="caps_zoo")
class RecurrentWriter(GenerativeModel, LossTermsModel):
    """DRAW (LSTM encoder) or DCRW (CNN encoder): a sequential VAE.

    Args:
        image_shape: ``(height, width, channels)`` of binary images.
        steps: T, the number of drawing steps.
        latent_dim: size of each ``z_t``.
        encoder: ``"lstm"`` (DRAW) or ``"cnn"`` (DCRW).
        encoder_units: LSTM encoder units (``encoder="lstm"`` only).
        cnn_filters: filters of the CNN encoder's two 3x3 convolutions.
        decoder_units: LSTM decoder units.
        read_attention / read_size: ``FilterbankRead``. With the CNN encoder
            and no read attention, x is encoded once (the paper's variant).
        write_attention / write_size: ``FilterbankWrite``.
        seed: seed of the posterior noise drawn in ``call``.
    """

    LOSS_TERMS = ("reconstruction_nll", "latent_kl")
    # Bernoulli pixels: the bound holds for binary images only.
    IMAGE_VALUES = checks.BINARY

    def __init__(
        self,
        image_shape=(28, 28, 1),
        steps=64,
        latent_dim=100,
        encoder="lstm",
        encoder_units=256,
        cnn_filters=(32, 64),
        decoder_units=256,
        read_attention=True,
        read_size=2,
        write_attention=True,
        write_size=5,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {ENCODERS}, got '{encoder}'.")
        if int(steps) < 1 or int(latent_dim) < 1:
            raise ValueError(f"steps and latent_dim must be >= 1; got {steps} and {latent_dim}.")
        self.image_shape = tuple(int(v) for v in image_shape)
        self.steps = int(steps)
        self.latent_dim = int(latent_dim)
        self.encoder = encoder
        self.encoder_units = int(encoder_units)
        self.cnn_filters = tuple(int(v) for v in cnn_filters)
        self.decoder_units = int(decoder_units)
        self.read_attention = bool(read_attention)
        self.read_size = int(read_size)
        self.write_attention = bool(write_attention)
        self.write_size = int(write_size)
        self.seed = seed
        # DCRW without read attention encodes x once (eq. 29).
        self.encode_once = encoder == "cnn" and not self.read_attention

        self.reader = self.make_reader()
        if encoder == "lstm":
            self.encoder_cell = keras.layers.LSTMCell(self.encoder_units, name="encoder_lstm")
        else:
            first, second = self.cnn_filters
            self.encoder_cnn = keras.Sequential(
                [
                    keras.layers.Conv2D(first, 3, padding="same", activation="relu", name="conv1"),
                    keras.layers.MaxPooling2D(2, name="pool1"),
                    keras.layers.Conv2D(second, 3, padding="same", activation="relu", name="conv2"),
                    keras.layers.MaxPooling2D(2, name="pool2"),
                    keras.layers.Flatten(name="flatten"),
                ],
                name="encoder_cnn",
            )
        # float32: exp(log sigma) and the KL are sensitive to rounding.
        self.posterior_mean = keras.layers.Dense(self.latent_dim, dtype="float32", name="posterior_mean")
        self.posterior_log_std = keras.layers.Dense(
            self.latent_dim, dtype="float32", name="posterior_log_std"
        )
        self.decoder_cell = keras.layers.LSTMCell(self.decoder_units, name="decoder_lstm")
        self.writer = FilterbankWrite(
            self.write_size, self.image_shape, attention=self.write_attention, name="write"
        )
        self.noise_seed = keras.random.SeedGenerator(seed, name="noise_seed")

    # -- building --------------------------------------------------------------

    def build(self, input_shape=None):
        batch = None
        images_shape = (batch, *self.image_shape)
        decoder_state_shape = (batch, self.decoder_units)
        context_dim = self.build_image_context(images_shape)
        if self.encode_once:
            self.encoder_cnn.build(images_shape)
            encoding_dim = self.encoder_cnn.compute_output_shape(images_shape)[-1]
        else:
            glimpse_dim = 0
            if self.reader is not None:
                self.reader.build(images_shape, images_shape, decoder_state_shape)
                glimpse_shape = self.reader.compute_output_shape(images_shape)
            if self.reader is None:
                pass  # no glimpse: the encoder reads what encoder_step_inputs adds
            elif self.encoder == "lstm":
                glimpse_dim = glimpse_shape[1] * glimpse_shape[2] * glimpse_shape[3]
            else:
                self.encoder_cnn.build(glimpse_shape)
                glimpse_dim = self.encoder_cnn.compute_output_shape(glimpse_shape)[-1]
            step_dim = glimpse_dim + self.decoder_units + context_dim
            if self.encoder == "lstm":
                self.encoder_cell.build((batch, step_dim))
                encoding_dim = self.encoder_units
            else:
                encoding_dim = step_dim
        self.posterior_mean.build((batch, encoding_dim))
        self.posterior_log_std.build((batch, encoding_dim))
        self.decoder_cell.build((batch, self.build_decoder_step_input((batch, self.latent_dim))))
        self.writer.build(decoder_state_shape)
        self.built = True

    # -- hooks for subclasses ----------------------------------------------------

    def make_reader(self):
        """The read layer (``FilterbankRead``), or None for an encoder that
        reads no glimpse (then ``encoder_step_inputs`` gets None for it)."""
        return FilterbankRead(self.read_size, attention=self.read_attention, name="read")

    def build_image_context(self, images_shape):
        """Build what ``image_context`` uses; return the size it adds to every
        encoder step's input (``encoder_step_inputs``). None here: 0."""
        return 0

    def image_context(self, images, training):
        """``(context, outputs)``, computed once per image: ``context`` is
        passed to ``encoder_step_inputs`` at every step, ``outputs`` (a dict)
        is added to what ``reconstruct`` returns. None here: ``({}, {})``."""
        return {}, {}

    def encoder_step_inputs(self, glimpse_features, decoder_h, context):
        """The tensors the encoder reads at one step, concatenated in this
        order: DRAW's ``[r_t, h_dec_{t-1}]`` (``r_t`` through the CNN, for
        DCRW), plus whatever a subclass adds from ``context``."""
        return [glimpse_features, decoder_h]

    def build_decoder_step_input(self, z_shape):
        """Build the block between z_t and the decoder LSTM; return the size
        of what it gives the LSTM. None here: z_t itself."""
        return z_shape[-1]

    def decoder_step_input(self, z, training):
        """What the decoder LSTM reads at one step: z_t itself here."""
        return ops.cast(z, self.compute_dtype)

    # -- the recurrence --------------------------------------------------------

    def _zero_state(self, batch, units):
        return ops.zeros((batch, units), dtype=self.compute_dtype)

    def _posterior(self, encoding):
        return self.posterior_mean(encoding), self.posterior_log_std(encoding)

    def _encode_step(self, images, canvas, decoder_h, encoder_state, context):
        """``(h_enc_t, encoder_state)`` of one step (eqs. 7-9)."""
        features = None
        if self.reader is not None:
            error_images = images - ops.sigmoid(canvas)
            glimpse = self.reader(images, error_images, decoder_h)
            if self.encoder == "lstm":
                features = ops.cast(ops.reshape(glimpse, (ops.shape(glimpse)[0], -1)), self.compute_dtype)
            else:
                features = self.encoder_cnn(ops.cast(glimpse, self.compute_dtype))
        inputs = ops.concatenate(
            [ops.cast(t, self.compute_dtype) for t in self.encoder_step_inputs(features, decoder_h, context)],
            axis=-1,
        )
        if self.encoder == "lstm":
            return self.encoder_cell(inputs, encoder_state)
        return inputs, encoder_state

    def _write_step(self, z, canvas, decoder_state, training=False):
        """One decoder step (eqs. 11-12): ``h_dec_t = LSTM(h_dec_{t-1}, z_t)``,
        ``c_t = c_{t-1} + write(h_dec_t)``. Returns ``(c_t, decoder_state,
        write_window)``; ``decoder_state[0]`` is ``h_dec_t``."""
        decoder_h, decoder_state = self.decoder_cell(self.decoder_step_input(z, training), decoder_state)
        update, window = self.writer(decoder_h, return_window=True)
        return canvas + ops.cast(update, "float32"), decoder_state, window

    def reconstruct(self, images, noise, training=False):
        """Encode and decode with given posterior noise ``(batch, T, latent_dim)``.

        Deterministic; ``call`` draws the noise. Returns a dict:
        ``canvas_logits`` c_T, ``reconstruction`` sigmoid(c_T) and
        ``latent_kl`` Lz per image (nats), plus a subclass's
        ``image_context`` outputs.
        """
        images = self.check_images(images)
        images = ops.cast(images, "float32")
        batch = ops.shape(images)[0]
        canvas = ops.zeros((batch, *self.image_shape), dtype="float32")
        decoder_state = [self._zero_state(batch, self.decoder_units)] * 2
        encoder_state = None
        if self.encoder == "lstm":
            encoder_state = [self._zero_state(batch, self.encoder_units)] * 2
        context, context_outputs = self.image_context(images, training)
        if self.encode_once:
            once = self._posterior(self.encoder_cnn(ops.cast(images, self.compute_dtype)))
        latent_kl = ops.zeros((batch,), dtype="float32")
        for step in range(self.steps):
            if self.encode_once:
                mean, log_std = once
            else:
                encoding, encoder_state = self._encode_step(
                    images, canvas, decoder_state[0], encoder_state, context
                )
                mean, log_std = self._posterior(encoding)
            latent_kl = latent_kl + losses.gaussian_kl_nats(mean, log_std)
            z = mean + ops.exp(log_std) * noise[:, step]
            canvas, decoder_state, _ = self._write_step(z, canvas, decoder_state, training)
        return {
            "reconstruction": ops.sigmoid(canvas),
            "canvas_logits": canvas,
            "latent_kl": latent_kl,
            **context_outputs,
        }

    def call(self, images, training=False):
        noise = replica_normal((ops.shape(images)[0], self.steps, self.latent_dim), self.noise_seed)
        return self.reconstruct(images, noise, training=training)

    def generate(self, noise, return_sequence=False):
        """Draw from prior noise ``(n, T', latent_dim)``; T' may differ from T.

        Returns ``sigmoid(c_T')`` ``(n, height, width, channels)``; with
        ``return_sequence`` a dict that adds ``canvases`` ``(T', n, h, w, c)``
        (``sigmoid(c_t)`` after every step) and ``write_windows`` (a dict of
        ``(T', n)`` tensors: centre, stride, variance, intensity in pixels;
        None without write attention).
        """
        noise = ops.convert_to_tensor(noise)
        if len(noise.shape) != 3 or noise.shape[-1] != self.latent_dim:
            raise ValueError(
                f"noise must be (n, steps, {self.latent_dim}); got shape {tuple(noise.shape)}."
            )
        batch, steps = ops.shape(noise)[0], noise.shape[1]
        canvas = ops.zeros((batch, *self.image_shape), dtype="float32")
        decoder_state = [self._zero_state(batch, self.decoder_units)] * 2
        canvases, windows = [], []
        for step in range(steps):
            canvas, decoder_state, window = self._write_step(noise[:, step], canvas, decoder_state)
            if return_sequence:
                canvases.append(ops.sigmoid(canvas))
                windows.append(window)
        images = ops.sigmoid(canvas)
        if not return_sequence:
            return images
        write_windows = write_boxes = None
        if self.write_attention:
            write_windows = {key: ops.stack([w[key] for w in windows]) for key in windows[0]}
            write_boxes = window_box(write_windows, self.write_size)
        return {
            "images": images,
            "canvases": ops.stack(canvases),
            "write_windows": write_windows,
            "write_boxes": write_boxes,
        }

    def sample(self, n, steps=None, seed=None):
        """``n`` images from the prior, with the canvas sequence and write windows.

        ``steps`` defaults to the T the model was trained with. Returns numpy
        arrays: ``images``, ``canvases``, ``write_windows`` and ``write_boxes``
        as in ``generate``.
        """
        steps = self.steps if steps is None else check_count("steps", steps)
        noise = keras.random.normal((check_count("n", n), steps, self.latent_dim), seed=seed)
        drawn = self.generate(noise, return_sequence=True)
        return keras.tree.map_structure(
            lambda value: None if value is None else ops.convert_to_numpy(value), drawn
        )

    def serving_endpoints(self):
        """``generate`` (noise to images) and ``reconstruct`` for ``caps_zoo.export``."""

        def generate(noise):
            return {"images": self.generate(noise)}

        def reconstruct(images, noise):
            return self.reconstruct(images, noise)

        noise = tf.TensorSpec([None, self.steps, self.latent_dim], tf.float32, name="noise")
        images = tf.TensorSpec([None, *self.image_shape], tf.float32, name="images")
        return {"generate": (generate, [noise]), "reconstruct": (reconstruct, [images, noise])}

    # -- training --------------------------------------------------------------

    def forward_with_loss_terms(self, images, labels, training):
        """Outputs and the terms of the negative lower bound, nats per image:
        ``reconstruction_nll`` (Lx) and ``latent_kl`` (Lz). Labels are not used."""
        outputs = self(images, training=training)
        return outputs, {
            "reconstruction_nll": losses.bernoulli_nll_nats(images, outputs["canvas_logits"]),
            "latent_kl": outputs["latent_kl"],
        }

    def get_config(self):
        config = super().get_config()
        config.update(
            image_shape=self.image_shape,
            steps=self.steps,
            latent_dim=self.latent_dim,
            encoder=self.encoder,
            encoder_units=self.encoder_units,
            cnn_filters=self.cnn_filters,
            decoder_units=self.decoder_units,
            read_attention=self.read_attention,
            read_size=self.read_size,
            write_attention=self.write_attention,
            write_size=self.write_size,
            seed=self.seed,
        )
        return config


DRAW_CONFIG = dict(encoder="lstm", steps=64, read_size=2, write_size=5)
DCRW_CONFIG = dict(encoder="cnn", steps=10, read_size=7, write_size=5)
DCRW_NO_READ_ATTENTION_CONFIG = dict(DCRW_CONFIG, read_attention=False)


@register_model(paper=PAPER, pretrained=("mnist",))
def draw(**overrides):
    """DRAW with attention (Gregor et al. 2015): LSTM encoder and decoder, T = 64."""
    return build_compiled(RecurrentWriter, "draw", DRAW_CONFIG, overrides)


@register_model(paper=PAPER, pretrained=("mnist",))
def dcrw(**overrides):
    """DCRW: a CNN encoder on 7x7 attended glimpses, an LSTM decoder, write 5x5."""
    return build_compiled(RecurrentWriter, "dcrw", DCRW_CONFIG, overrides)


@register_model(paper=PAPER, pretrained=("mnist",))
def dcrw_no_read_attention(**overrides):
    """DCRW without attention in read: the CNN encodes x once, z_t sampled every step."""
    return build_compiled(RecurrentWriter, "dcrw_no_read_attention", DCRW_NO_READ_ATTENTION_CONFIG, overrides)
