"""GRAN: a generative adversarial network whose generator draws on a canvas.

Paper: ``shared/papers/gran-recurrent-adversarial.txt`` (Im, Kim, Jiang &
Memisevic 2016). The generator (eqs. 5-9, Algorithm 1), with ``h_c,1 = 0``::

    h_z,t   = tanh(W z_t + b)                   z drawn once, or at every step
    h_c,t   = g(Delta C_{t-1})                  for t > 1
    Delta C_t = f([h_z,t, h_c,t])
    C       = sigmoid(sum_t Delta C_t)

``f`` is a DCGAN decoder: one dense layer to a ``filters[0]`` x (H/2^k) x
(W/2^k) map, then k fractionally strided 5x5 convolutions (filters[1:], then
the image channels; linear output). ``g`` mirrors it: k strided 5x5
convolutions, then one dense layer with tanh, so that ``h_c`` lies in
(-1, 1) like ``h_z`` (the paper's reason for the tanh of eq. 7); ``h_c`` has
the size of z, as in the authors' code. The paper's MNIST sizes are the
defaults: filters [80, 40] (+ 1 channel), 5x5 kernels, z of 60. GRAN1
(T = 1) never calls ``g`` and has none, and its ``f`` takes ``h_z`` alone
(its ``h_c`` would always be 0): DCGAN plus the dense layer of eq. 7, as
the paper says.

The discriminator's batch normalisation sees a real batch and a generated
batch separately in training (as in DCGAN); its moving statistics, which
inference (``discriminate``, the GAM battle) uses, average over both.

Batch normalisation (DCGAN's trick, which the paper uses) follows every
hidden layer of ``f`` and ``g``, with statistics and scale kept per step
(as in Cooijmans et al.'s recurrent batch normalisation): the layers'
weights are shared over steps, but the activations of step 1 (where
``h_c = 0``) and step 5 are distributed differently, and one set of moving
averages for all steps would not match any of them at inference. Sampling
more steps than T (the paper's 7 and 9) reuses the last step's statistics.

The discriminator is DCGAN's: strided 5x5 convolutions with the generator's
filters in reverse (40, then 80 for MNIST), batch normalisation after all but
the first, LeakyReLU(0.2), and one dense logit.

Training (``AdversarialModel.train_step``): one discriminator step on a real
and a generated batch, then one generator step with the non-saturating loss
of eq. 2 (``-log D(G(z))``) on a newly generated batch, each with its own
Adam optimizer and learning rate. Logged: ``discriminator_loss``,
``generator_loss``, and D's accuracy on the real (``real_accuracy``) and the
generated (``fake_accuracy``) batch of its step.
"""

import keras
import tensorflow as tf
from keras import ops

from caps_zoo import checks, losses
from caps_zoo.models.base import AdversarialModel, GenerativeModel
from caps_zoo.checks import check_count
from caps_zoo.models.builder import build_compiled, replica_normal
from caps_zoo.registry import register_model

PAPER = "gran-recurrent-adversarial.txt"
NOISE_MODES = ("once", "every_step")
GENERATOR_ARGUMENTS = ("image_shape", "steps", "latent_dim", "filters", "kernel_size", "noise_mode")


@keras.saving.register_keras_serializable(package="caps_zoo")
class RecurrentCanvasGenerator(keras.layers.Layer):
    """GRAN's generator G: noise in, ``C = sigmoid(sum_t Delta C_t)`` out.

    Args:
        image_shape: ``(height, width, channels)``; height and width must be
            divisible by ``2 ** len(filters)``.
        steps: T, the number of canvas updates it is trained with.
        latent_dim: size of z (and of ``h_z`` and ``h_c``).
        filters: filters of ``f`` from its dense layer up (``g`` in reverse).
        kernel_size: of every (transposed) convolution.
        noise_mode: ``"once"`` (one z for all steps; noise ``(batch,
            latent_dim)``) or ``"every_step"`` (noise ``(batch, steps,
            latent_dim)``), the paper's two scenarios.
    """

    def __init__(
        self,
        image_shape=(28, 28, 1),
        steps=3,
        latent_dim=60,
        filters=(80, 40),
        kernel_size=5,
        noise_mode="once",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got '{noise_mode}'.")
        self.image_shape = tuple(int(v) for v in image_shape)
        self.steps = int(steps)
        self.latent_dim = int(latent_dim)
        self.filters = tuple(int(v) for v in filters)
        self.kernel_size = int(kernel_size)
        self.noise_mode = noise_mode
        if self.steps < 1 or self.latent_dim < 1 or not self.filters:
            raise ValueError("steps and latent_dim must be >= 1 and filters non-empty.")
        scale = 2 ** len(self.filters)
        height, width, channels = self.image_shape
        if height % scale or width % scale:
            raise ValueError(
                f"image height and width must be divisible by 2**len(filters) = {scale}; "
                f"got {self.image_shape} with filters {self.filters}."
            )
        self.start_shape = (height // scale, width // scale, self.filters[0])

        def conv(layer, count, name, **options):
            return layer(count, self.kernel_size, strides=2, padding="same", name=name, **options)

        # eq. 7; the noise's own projection.
        self.noise_projection = keras.layers.Dense(self.latent_dim, activation="tanh", name="noise_projection")
        # f: dense, then transposed convolutions (biases are redundant before BN).
        self.decoder_dense = keras.layers.Dense(
            height // scale * (width // scale) * self.filters[0], use_bias=False, name="decoder_dense"
        )
        self.decoder_convs = [
            conv(keras.layers.Conv2DTranspose, count, f"decoder_conv{i + 1}", use_bias=False)
            for i, count in enumerate(self.filters[1:])
        ] + [conv(keras.layers.Conv2DTranspose, channels, f"decoder_conv{len(self.filters)}",
                  dtype="float32")]
        self.decoder_norms = [
            [keras.layers.BatchNormalization(name=f"decoder_norm{i}_step{t + 1}")
             for i in range(len(self.filters))]
            for t in range(self.steps)
        ]
        # g: only steps 2..T read the previous update.
        self.encoder_convs, self.encoder_norms, self.encoder_dense = [], [], None
        if self.steps > 1:
            self.encoder_convs = [
                conv(keras.layers.Conv2D, count, f"encoder_conv{i + 1}", use_bias=False)
                for i, count in enumerate(reversed(self.filters))
            ]
            self.encoder_norms = [
                [keras.layers.BatchNormalization(name=f"encoder_norm{i}_step{t + 2}")
                 for i in range(len(self.filters))]
                for t in range(self.steps - 1)
            ]
            self.encoder_dense = keras.layers.Dense(self.latent_dim, activation="tanh", name="encoder_dense")

    def build(self, input_shape=None):
        batch = None
        self.noise_projection.build((batch, self.latent_dim))
        # [h_z, h_c]; GRAN1 never has an h_c, so its f takes h_z alone.
        self.decoder_dense.build((batch, self.latent_dim * (2 if self.steps > 1 else 1)))
        shape = (batch, *self.start_shape)
        for index, conv in enumerate(self.decoder_convs):
            for norms in self.decoder_norms:
                norms[index].build(shape)
            conv.build(shape)
            shape = conv.compute_output_shape(shape)
        shape = (batch, *self.image_shape)
        for index, conv in enumerate(self.encoder_convs):
            conv.build(shape)
            shape = conv.compute_output_shape(shape)
            for norms in self.encoder_norms:
                norms[index].build(shape)
        if self.encoder_dense is not None:
            self.encoder_dense.build((batch, shape[1] * shape[2] * shape[3]))
        self.built = True

    def noise_shape(self, steps=None):
        """The shape of one example's noise: ``(latent_dim,)`` or ``(steps, latent_dim)``."""
        if self.noise_mode == "once":
            return (self.latent_dim,)
        return (self.steps if steps is None else int(steps), self.latent_dim)

    def _update(self, h_z, h_c, step, training):
        """``Delta C_t = f([h_z, h_c])`` (eq. 8), float32; ``f(h_z)`` if h_c is None."""
        norms = self.decoder_norms[min(step, self.steps - 1)]
        x = self.decoder_dense(h_z if h_c is None else ops.concatenate([h_z, h_c], axis=-1))
        x = ops.reshape(x, (-1, *self.start_shape))
        for conv, norm in zip(self.decoder_convs, norms):
            x = conv(ops.relu(norm(x, training=training)))
        return ops.cast(x, "float32")

    def _encode(self, update, step, training):
        """``h_c,t = g(Delta C_{t-1})`` (eq. 6)."""
        norms = self.encoder_norms[min(step - 1, self.steps - 2)]
        x = ops.cast(update, self.compute_dtype)
        for conv, norm in zip(self.encoder_convs, norms):
            x = ops.relu(norm(conv(x), training=training))
        return self.encoder_dense(ops.reshape(x, (ops.shape(x)[0], -1)))

    def _check_noise(self, noise, steps):
        if self.noise_mode == "once":
            expected = f"(batch, {self.latent_dim})"
            fits = len(noise.shape) == 2
        else:
            expected = f"(batch, steps, {self.latent_dim})"
            fits = len(noise.shape) == 3 and (steps is None or noise.shape[1] == int(steps))
        if not fits or noise.shape[-1] != self.latent_dim:
            raise ValueError(
                f"noise_mode '{self.noise_mode}' takes noise of shape {expected}"
                + ("" if steps is None else f" for {steps} steps")
                + f"; got {tuple(noise.shape)}."
            )

    def call(self, noise, steps=None, training=False, return_sequence=False):
        """Images ``C`` from ``noise``; with ``return_sequence`` also the canvases.

        ``steps`` (``"once"`` mode) may exceed T; in ``"every_step"`` mode the
        noise's second axis gives it. Returns ``images`` ``(batch, h, w, c)``,
        or a dict that adds ``canvases`` ``(steps, batch, h, w, c)``:
        ``sigmoid(sum_{s <= t} Delta C_s)`` after every step.
        """
        noise = ops.convert_to_tensor(noise)
        self._check_noise(noise, steps)
        if self.noise_mode == "every_step":
            steps = noise.shape[1]
        steps = self.steps if steps is None else int(steps)
        if steps > 1 and self.steps == 1:
            raise ValueError("A GRAN trained with T = 1 has no canvas encoder g: it draws in one step.")
        noise = ops.cast(noise, self.compute_dtype)
        if self.noise_mode == "once":
            h_z = self.noise_projection(noise)
        # h_c,1 = 0: the first step sees no earlier update (GRAN1: no h_c at all).
        h_c = None
        if self.steps > 1:
            h_c = ops.zeros((ops.shape(noise)[0], self.latent_dim), dtype=self.compute_dtype)
        canvas, canvases, update = 0.0, [], None
        for step in range(steps):
            if self.noise_mode == "every_step":
                h_z = self.noise_projection(noise[:, step])
            if step > 0:
                h_c = self._encode(update, step, training)
            update = self._update(h_z, h_c, step, training)
            canvas = canvas + update
            if return_sequence:
                canvases.append(ops.sigmoid(canvas))
        images = ops.sigmoid(canvas)
        if return_sequence:
            return {"images": images, "canvases": ops.stack(canvases)}
        return images

    def compute_output_shape(self, input_shape):
        return (input_shape[0], *self.image_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            image_shape=self.image_shape,
            steps=self.steps,
            latent_dim=self.latent_dim,
            filters=self.filters,
            kernel_size=self.kernel_size,
            noise_mode=self.noise_mode,
        )
        return config


def dcgan_discriminator(image_shape, filters, kernel_size=5, leaky_relu_slope=0.2, name="discriminator"):
    """DCGAN's discriminator: strided convolutions ``filters``, batch norm after
    all but the first, LeakyReLU, one dense logit (float32)."""
    layers = [keras.Input(image_shape)]
    for index, count in enumerate(filters):
        layers.append(keras.layers.Conv2D(count, kernel_size, strides=2, padding="same",
                                          use_bias=index == 0, name=f"conv{index + 1}"))
        if index > 0:
            layers.append(keras.layers.BatchNormalization(name=f"norm{index + 1}"))
        layers.append(keras.layers.LeakyReLU(leaky_relu_slope, name=f"leaky_relu{index + 1}"))
    layers += [keras.layers.Flatten(name="flatten"),
               keras.layers.Dense(1, dtype="float32", name="logit")]
    return keras.Sequential(layers, name=name)


@keras.saving.register_keras_serializable(package="caps_zoo")
class RecurrentAdversarialNetwork(GenerativeModel, AdversarialModel):
    """GRAN: ``RecurrentCanvasGenerator`` G and a DCGAN discriminator D.

    Args: those of ``RecurrentCanvasGenerator`` (the generator's), plus
        discriminator_filters: D's convolutions, bottom up; default the
            generator's filters reversed (MNIST: 40, 80).
        leaky_relu_slope: of D's activations.
        seed: seed of the noise drawn in ``train_step`` / ``test_step``.

    ``compile(optimizer=..., discriminator_optimizer=...)``: ``optimizer``
    trains G, ``discriminator_optimizer`` D (default: Adam(2e-4, beta_1=0.5),
    DCGAN's). Calling the model on noise generates images;
    ``discriminate(images)`` gives D's probability that images are real.
    """

    DISCRIMINATOR_TERMS = ("discriminator_loss",)
    # D's accuracy on the real batch (judged real) and on G's (judged fake).
    DISCRIMINATOR_DIAGNOSTICS = ("real_accuracy", "fake_accuracy")
    GENERATOR_TERMS = ("generator_loss",)

    def __init__(
        self,
        image_shape=(28, 28, 1),
        steps=3,
        latent_dim=60,
        filters=(80, 40),
        kernel_size=5,
        noise_mode="once",
        discriminator_filters=None,
        leaky_relu_slope=0.2,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.generator = RecurrentCanvasGenerator(
            image_shape, steps, latent_dim, filters, kernel_size, noise_mode, name="generator"
        )
        self.image_shape = self.generator.image_shape
        self.steps = self.generator.steps
        self.latent_dim = self.generator.latent_dim
        self.noise_mode = noise_mode
        self.discriminator_filters = tuple(
            int(v) for v in (discriminator_filters or reversed(self.generator.filters))
        )
        self.leaky_relu_slope = float(leaky_relu_slope)
        self.seed = seed
        self.discriminator = dcgan_discriminator(
            self.image_shape, self.discriminator_filters, kernel_size, self.leaky_relu_slope
        )
        self.noise_seed = keras.random.SeedGenerator(seed, name="noise_seed")

    def build(self, input_shape=None):
        self.generator.build()
        self.discriminator.build((None, *self.image_shape))
        self.built = True

    # -- generating and discriminating ----------------------------------------

    def prior_noise(self, n, steps=None):
        """Noise for ``n`` images from N(0, I), shaped for the noise mode (new
        on every call and on every replica)."""
        return replica_normal((n, *self.generator.noise_shape(steps)), self.noise_seed)

    def call(self, noise, steps=None, training=False):
        return self.generator(noise, steps=steps, training=training)

    def check_call_inputs(self, noise):
        return checks.assert_finite(noise, f"{self.name}: noise")

    def generate(self, noise, steps=None):
        """Images from ``noise`` (inference mode, deterministic)."""
        return self.generator(noise, steps=steps, training=False)

    def sample(self, n, steps=None, seed=None):
        """``n`` images from the prior with the canvas after every step (numpy).

        ``steps`` may exceed T (noise drawn once), or sets the number of noise
        draws (noise at every step). Returns ``images`` ``(n, h, w, c)`` and
        ``canvases`` ``(steps, n, h, w, c)``.
        """
        steps = self.steps if steps is None else check_count("steps", steps)
        noise = keras.random.normal((check_count("n", n), *self.generator.noise_shape(steps)), seed=seed)
        drawn = self.generator(noise, steps=steps, training=False, return_sequence=True)
        return {key: ops.convert_to_numpy(value) for key, value in drawn.items()}

    def discriminate(self, images):
        """D's probability that each image is real: ``(batch,)``, inference mode."""
        images = self.check_images(images)
        return ops.sigmoid(self.discriminator(images, training=False))[:, 0]

    def serving_endpoints(self):
        """``generate`` (noise to images) and ``discriminate`` for ``caps_zoo.export``."""

        def generate(noise):
            return {"images": self.generate(noise)}

        def discriminate(images):
            return {"probability_real": self.discriminate(images)}

        noise = tf.TensorSpec([None, *self.generator.noise_shape()], tf.float32, name="noise")
        images = tf.TensorSpec([None, *self.image_shape], tf.float32, name="images")
        return {"generate": (generate, [noise]), "discriminate": (discriminate, [images])}

    # -- training: the steps are AdversarialModel's ---------------------------------

    def default_optimizer(self):
        return dcgan_adam()

    def default_discriminator_optimizer(self):
        return dcgan_adam()

    def generator_variables(self):
        return self.generator.trainable_variables

    def discriminator_variables(self):
        return self.discriminator.trainable_variables

    def _generated_logits(self, batch, training):
        """D's logits on a batch G generates now."""
        fake_images = self.generator(self.prior_noise(batch), training=training)
        return self.discriminator(fake_images, training=training)[:, 0]

    def discriminator_loss_terms(self, real_images, training):
        real_images = self.check_images(real_images)
        real_logits = self.discriminator(real_images, training=training)[:, 0]
        fake_logits = self._generated_logits(ops.shape(real_images)[0], training)
        terms = {"discriminator_loss": losses.discriminator_loss(real_logits, fake_logits)}
        diagnostics = {
            "real_accuracy": ops.cast(real_logits >= 0, "float32"),
            "fake_accuracy": ops.cast(fake_logits < 0, "float32"),
        }
        return terms, diagnostics

    def generator_loss_terms(self, real_images, training):
        fake_logits = self._generated_logits(ops.shape(real_images)[0], training)
        return {"generator_loss": losses.generator_loss(fake_logits)}, {}

    def get_config(self):
        config = super().get_config()
        generator = self.generator.get_config()  # the generator's arguments are the model's
        config.update({key: generator[key] for key in GENERATOR_ARGUMENTS})
        config.update(
            discriminator_filters=self.discriminator_filters,
            leaky_relu_slope=self.leaky_relu_slope,
            seed=self.seed,
        )
        return config


def dcgan_adam(learning_rate=2e-4):
    """DCGAN's optimizer (Radford et al.): Adam with beta_1 = 0.5."""
    return keras.optimizers.Adam(learning_rate, beta_1=0.5)


def _gran(name, steps, overrides):
    return build_compiled(
        RecurrentAdversarialNetwork, name, dict(steps=steps), overrides, optimizer=dcgan_adam()
    )


@register_model(paper=PAPER, pretrained=("mnist",))
def gran1(**overrides):
    """GRAN with T = 1: DCGAN plus the dense layer of eq. 7 (MNIST sizes)."""
    return _gran("gran1", 1, overrides)


@register_model(paper=PAPER, pretrained=("mnist",))
def gran3(**overrides):
    """GRAN with T = 3 canvas updates (MNIST sizes: filters 80-40-1, z of 60)."""
    return _gran("gran3", 3, overrides)


@register_model(paper=PAPER, pretrained=("mnist",))
def gran5(**overrides):
    """GRAN with T = 5 canvas updates (MNIST sizes: filters 80-40-1, z of 60)."""
    return _gran("gran5", 5, overrides)
