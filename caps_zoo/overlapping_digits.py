"""Scoring images that hold several digits at once (MultiMNIST, Sabour et
al. 2017, Sec. 6).

Sabour's definition: an image of two digits is classified correctly only if
its two longest class capsules are exactly its two labels (in any order).
``at_least_one`` (one of the two longest capsules is one of the labels) is
reported beside it by some papers; it is a weaker score and not comparable
with the paper's.
"""

import keras
import tensorflow as tf


def predicted_digits(scores, digits_per_image):
    """The ``digits_per_image`` classes of highest score, ``(batch, k)``
    int32, the highest first."""
    return tf.math.top_k(tf.cast(scores, tf.float32), k=digits_per_image).indices


def digit_matches(scores, label_ids):
    """``(all_correct, at_least_one)``, float32 ``(batch,)`` each: whether the
    ``k`` longest classes are exactly the ``k`` labels of ``label_ids``
    ``(batch, k)``, and whether any of them is one of the labels.

    Ties count as wrong: a label is among the ``k`` longest only if it is
    strictly longer than the competing other classes. (``top_k`` would break
    a tie toward the lower class index, so a model whose capsules all have
    one length would be credited with every pair labelled {0, 1}.)
    """
    label_ids = tf.cast(label_ids, tf.int32)
    k = label_ids.shape[-1]
    scores = tf.cast(scores, tf.float32)
    is_label = tf.reduce_max(tf.one_hot(label_ids, tf.shape(scores)[-1], dtype=tf.float32), axis=1) > 0
    inf = tf.constant(float("inf"))
    # The k longest classes that are not labels, longest first.
    others = tf.math.top_k(tf.where(is_label, -inf, scores), k=k).values
    shortest_label = tf.reduce_min(tf.where(is_label, scores, inf), axis=-1)
    longest_label = tf.reduce_max(tf.where(is_label, scores, -inf), axis=-1)
    # All k labels are the k longest iff the shortest label beats every other
    # class; at least one is among them iff the longest label beats the k-th
    # longest other class.
    return (tf.cast(shortest_label > others[:, 0], tf.float32),
            tf.cast(longest_label > others[:, k - 1], tf.float32))


@keras.saving.register_keras_serializable(package="caps_zoo")
class PairAccuracy(keras.metrics.Mean):
    """The share of images whose longest classes are exactly their labels
    (``update_state(label_ids, scores)``, ``label_ids`` ``(batch, k)``)."""

    def __init__(self, name="pair_accuracy", **kwargs):
        super().__init__(name=name, **kwargs)

    def update_state(self, label_ids, scores, sample_weight=None):
        correct, _ = digit_matches(scores, label_ids)
        return super().update_state(correct, sample_weight)


@keras.saving.register_keras_serializable(package="caps_zoo")
class AtLeastOneAccuracy(keras.metrics.Mean):
    """The share of images with at least one of their labels among their
    longest classes: weaker than ``PairAccuracy``, not comparable with
    Sabour's figures."""

    def __init__(self, name="at_least_one_accuracy", **kwargs):
        super().__init__(name=name, **kwargs)

    def update_state(self, label_ids, scores, sample_weight=None):
        _, at_least_one = digit_matches(scores, label_ids)
        return super().update_state(at_least_one, sample_weight)


def separation_figure(merged, digits, label_ids, reconstructions, predicted, path=None, title=None):
    """Sabour's Fig. 5 / the Deep Capsule paper's Figs. 14-16: per row the
    merged input, its two source digits (true labels), the two
    reconstructions masked by the predicted labels, and both reconstructions
    overlaid (red: the longest capsule's, green: the second's). Rows whose
    prediction is wrong are titled in red. Saved to ``path`` (returned), or
    the figure without one."""
    import matplotlib

    if path is not None:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from caps_zoo.plots import finish_figure, grey_images

    merged = grey_images(merged, "merged")
    digits, reconstructions = np.asarray(digits), np.asarray(reconstructions)
    label_ids, predicted = np.asarray(label_ids), np.asarray(predicted)
    rows = len(merged)
    figure, axes = plt.subplots(rows, 6, figsize=(6 * 1.1, rows * 1.2), squeeze=False)
    for row in range(rows):
        first, second = (grey_images(reconstructions[row][k][None], "reconstructions")[0] for k in range(2))
        correct = set(label_ids[row].tolist()) == set(predicted[row].tolist())
        panels = [
            (merged[row], "input", "gray"),
            (grey_images(digits[row][0][None], "digits")[0], f"true {label_ids[row][0]}", "gray"),
            (grey_images(digits[row][1][None], "digits")[0], f"true {label_ids[row][1]}", "gray"),
            (first, f"rec. {predicted[row][0]}", "gray"),
            (second, f"rec. {predicted[row][1]}", "gray"),
            (np.stack([first, second, np.zeros_like(first)], axis=-1), "overlay", None),
        ]
        for axis, (image, label, cmap) in zip(axes[row], panels):
            axis.imshow(image, cmap=cmap, vmin=0, vmax=1)
            axis.set_title(label, fontsize=7, color="black" if correct or label == "input" else "red")
            axis.axis("off")
    return finish_figure(figure, title or "overlapping digits: input, true digits, reconstructions", path)
