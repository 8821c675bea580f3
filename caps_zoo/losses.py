"""Losses of the zoo's models: capsule, variational and adversarial.

Each returns one value per example; models average them and decide how to
scale for ``tf.distribute`` (see ``caps_zoo.models.base``).
"""

from keras import ops

MARGIN_POSITIVE = 0.9
MARGIN_NEGATIVE = 0.1
DOWNWEIGHT_ABSENT = 0.5
RECONSTRUCTION_WEIGHT = 0.0005


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
