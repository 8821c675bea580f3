"""Losses of the zoo's models: capsule, variational and adversarial.

Each returns one value per example; models average them and decide how to
scale for ``tf.distribute`` (see ``caps_zoo.models.base``).
"""

import keras
from keras import ops

# The (y_true, y_pred) losses are registered, so that a user's model compiled
# with them (model.compile(loss=caps_zoo.losses.margin_loss)) saves and loads
# without custom_objects.
_register = keras.saving.register_keras_serializable(package="caps_zoo")

MARGIN_POSITIVE = 0.9
MARGIN_NEGATIVE = 0.1
DOWNWEIGHT_ABSENT = 0.5
RECONSTRUCTION_WEIGHT = 0.0005


@_register
def margin_loss(
    labels,
    lengths,
    m_plus=MARGIN_POSITIVE,
    m_minus=MARGIN_NEGATIVE,
    down_weight=DOWNWEIGHT_ABSENT,
):
    """Sabour et al. eq. 4, summed over classes: shape ``(batch,)``.

    ``L_k = T_k max(0, m+ - |v_k|)^2 + lambda (1 - T_k) max(0, |v_k| - m-)^2``

    Args:
        labels: integer class ids ``(batch,)`` or ``(batch, 1)``, or a
            multi-hot / one-hot ``(batch, classes)`` target (several digits
            present at once).
        lengths: capsule lengths ``(batch, classes)``.
    """
    lengths = ops.cast(lengths, "float32")
    num_classes = lengths.shape[-1]
    if len(labels.shape) == 2 and labels.shape[-1] == 1 and num_classes != 1:
        labels = ops.reshape(labels, (-1,))
    if len(labels.shape) == 1:
        targets = ops.one_hot(ops.cast(labels, "int32"), num_classes)
    elif len(labels.shape) == 2 and labels.shape[-1] == num_classes:
        targets = ops.cast(labels, "float32")
    else:
        raise ValueError(
            f"labels must be class ids (batch,) or (batch, 1), or targets (batch, "
            f"{num_classes}); got shape {tuple(labels.shape)}."
        )
    present = targets * ops.square(ops.relu(m_plus - lengths))
    absent = down_weight * (1.0 - targets) * ops.square(ops.relu(lengths - m_minus))
    return ops.sum(present + absent, axis=-1)


def class_ids(labels, num_classes):
    """Class ids ``(batch,)`` of labels given as ids or as one-hot targets
    ``(batch, num_classes)`` (what ``margin_loss`` accepts)."""
    if len(labels.shape) == 2 and labels.shape[-1] == num_classes and num_classes != 1:
        return ops.argmax(labels, axis=-1)
    return labels


@_register
def reconstruction_squared_error(images, reconstructions, weight=RECONSTRUCTION_WEIGHT):
    """``weight`` x the sum of squared pixel errors per example: shape ``(batch,)``.

    The capsule decoder's term (Sabour et al.: weight 0.0005, so that it
    does not dominate the margin loss). Not the writers' reconstruction
    term, which is a Bernoulli NLL in nats (``bernoulli_nll_nats``).
    """
    images = ops.reshape(ops.cast(images, "float32"), (ops.shape(images)[0], -1))
    reconstructions = ops.reshape(
        ops.cast(reconstructions, "float32"), (ops.shape(reconstructions)[0], -1)
    )
    return weight * ops.sum(ops.square(images - reconstructions), axis=-1)


# -- variational losses of the recurrent writers (DRAW, DCRW), in nats -------


def _distributions():
    # Imported on first use: tensorflow-probability (and the tf-keras it
    # needs) costs seconds to import, and the capsule models do not use it.
    import tensorflow_probability as tfp

    return tfp.distributions


@_register
def bernoulli_nll_nats(images, logits):
    """``Lx = -log Bernoulli(x | sigmoid(logits))`` summed over pixels: ``(batch,)``.

    ``images`` must be binary (0 or 1).
    """
    tfd = _distributions()
    logits = ops.cast(logits, "float32")
    images = ops.cast(images, "float32")
    likelihood = tfd.Independent(
        tfd.Bernoulli(logits=logits, dtype="float32"),
        reinterpreted_batch_ndims=len(logits.shape) - 1,
    )
    return -likelihood.log_prob(images)


def gaussian_kl_nats(mean, log_std):
    """``KL(N(mean, exp(log_std)^2) || N(0, I))`` summed over dimensions: ``(batch,)``."""
    tfd = _distributions()
    mean = ops.cast(mean, "float32")
    log_std = ops.cast(log_std, "float32")
    posterior = tfd.Independent(tfd.Normal(mean, ops.exp(log_std)), reinterpreted_batch_ndims=1)
    prior = tfd.Independent(
        tfd.Normal(ops.zeros_like(mean), ops.ones_like(mean)), reinterpreted_batch_ndims=1
    )
    return tfd.kl_divergence(posterior, prior)


# -- adversarial losses (GRAN), from discriminator logits ----------------------


def discriminator_loss(real_logits, fake_logits):
    """D's loss of eq. 2: ``-log D(x) - log(1 - D(G(z)))`` per example: ``(batch,)``.

    Computed from logits (``D = sigmoid(logit)``), which stays finite where
    a probability would round to 0 or 1.
    """
    real_logits = ops.cast(real_logits, "float32")
    fake_logits = ops.cast(fake_logits, "float32")
    return ops.softplus(-real_logits) + ops.softplus(fake_logits)


def generator_loss(fake_logits):
    """G's non-saturating loss of eq. 2: ``-log D(G(z))`` per example: ``(batch,)``.

    Its gradient stays large while D rejects G's images, unlike the
    saturating ``log(1 - D(G(z)))`` of eq. 1.
    """
    return ops.softplus(-ops.cast(fake_logits, "float32"))


# -- autoencoder and hinge losses (CV-VAE, VQGAN) --------------------------------
# As the public CVGAN code computes them (its loss module, a taming-transformers
# fork): L1 and the image-gradient difference on pixels, PatchGAN logits with
# the hinge loss, and VQGAN's adaptive weight on the generator's GAN term.


def per_example_mean(values):
    """The mean of each example's values (any shape after the batch axis), float32: ``(batch,)``."""
    return ops.mean(ops.reshape(ops.cast(values, "float32"), (ops.shape(values)[0], -1)), axis=-1)


@_register
def l1_reconstruction(images, reconstructions):
    """Mean absolute pixel error per example: ``(batch,)``."""
    return per_example_mean(ops.abs(ops.cast(images, "float32") - ops.cast(reconstructions, "float32")))


def image_gradients(images):
    """Forward differences ``(dy, dx)`` of NHWC images, zero in the last row
    and column (``tf.image.image_gradients``'s convention)."""
    images = ops.cast(images, "float32")
    dy = ops.pad(images[:, 1:] - images[:, :-1], ((0, 0), (0, 1), (0, 0), (0, 0)))
    dx = ops.pad(images[:, :, 1:] - images[:, :, :-1], ((0, 0), (0, 0), (0, 1), (0, 0)))
    return dy, dx


@_register
def gradient_difference(images, reconstructions):
    """The image-gradient-difference loss (Mathieu et al. 2016, alpha = 1) per
    example: the mean over pixels of ``|dx - dx^| + |dy - dy^|``: ``(batch,)``.
    It penalises blurred edges that an L1 term alone averages away."""
    dy, dx = image_gradients(images)
    dy_hat, dx_hat = image_gradients(reconstructions)
    return per_example_mean(ops.abs(dx - dx_hat) + ops.abs(dy - dy_hat))


def hinge_discriminator_loss(real_logits, fake_logits):
    """VQGAN's hinge loss for D, ``0.5 (relu(1 - D(x)) + relu(1 + D(x^)))``,
    each averaged over the patches of an example: ``(batch,)``."""
    return 0.5 * (per_example_mean(ops.relu(1.0 - ops.cast(real_logits, "float32")))
                  + per_example_mean(ops.relu(1.0 + ops.cast(fake_logits, "float32"))))


def hinge_generator_loss(fake_logits):
    """The generator's side of the hinge loss, ``-D(x^)`` averaged over the
    patches of an example: ``(batch,)``."""
    return -per_example_mean(fake_logits)


ADAPTIVE_WEIGHT_MAX = 1e4


def adaptive_weight(reconstruction_gradient, gan_gradient, scale=0.8):
    """VQGAN's weight of the GAN term: ``|grad L_rec| / (|grad L_gan| + 1e-4)``,
    both gradients taken with respect to the decoder's last layer, clipped to
    [0, 1e4], without gradient, times ``scale``. It keeps the GAN term's pull
    on the decoder at the size of the reconstruction's, whatever the scale of
    the discriminator's logits."""
    ratio = ops.sqrt(ops.sum(ops.square(reconstruction_gradient))) / (
        ops.sqrt(ops.sum(ops.square(gan_gradient))) + 1e-4)
    return ops.stop_gradient(ops.clip(ratio, 0.0, ADAPTIVE_WEIGHT_MAX)) * scale
