"""Codebook usage over a whole dataset: ``CodeUsage`` and ``code_statistics``.

A quantizer's codebook usage is measured by the perplexity of its code
histogram, ``exp(H)`` with ``H`` the entropy (natural log) of the
normalised histogram: the number of equally used codes that would give the
same entropy, K for a uniformly used codebook of K codes, 1 for a collapsed
one. The histogram is accumulated over every batch given, so the statistics
are the dataset's: perplexity averaged per batch (the common mistake)
understates usage, since one batch cannot show every code (a batch of 64
positions has a perplexity of at most 64, whatever K).
"""

import numbers

import keras
import numpy as np
import tensorflow as tf


def _check_num_codes(num_codes):
    if not isinstance(num_codes, numbers.Integral) or isinstance(num_codes, bool) or num_codes < 1:
        raise ValueError(f"num_codes must be an int >= 1, got {num_codes!r}.")
    return int(num_codes)


def code_statistics(counts):
    """Usage statistics of a code histogram (NumPy in, Python floats out).

    ``counts``: ``(num_codes,)`` non-negative counts. Returns
    ``{"code_perplexity": exp(-sum_k p_k log p_k), "codes_used": fraction of
    codes with a count > 0}``, with ``p = counts / counts.sum()`` and
    ``0 log 0 = 0``. An empty histogram gives 0.0 for both: perplexity never
    exceeds the number of codes used (here none), and no NaN is reported.

    For example ``code_statistics([2, 2, 2, 0])`` is ``{"code_perplexity":
    3.0, "codes_used": 0.75}`` (to rounding): three codes used equally.
    """
    counts = np.asarray(counts, dtype="float64")
    if counts.ndim != 1 or counts.size == 0 or np.any(counts < 0):
        raise ValueError(
            f"counts must be a non-empty 1-D histogram of non-negative counts, got shape "
            f"{counts.shape} with minimum {counts.min() if counts.size else None}."
        )
    total = counts.sum()
    if total == 0:
        return {"code_perplexity": 0.0, "codes_used": 0.0}
    p = counts / total
    entropy = -np.sum(p * np.log(np.where(p > 0, p, 1.0)))
    return {
        "code_perplexity": float(np.exp(entropy)),
        "codes_used": float(np.mean(counts > 0)),
    }


@keras.saving.register_keras_serializable(package="caps_zoo")
class CodeUsage(keras.metrics.Metric):
    """Dataset-wide codebook usage: perplexity and fraction of codes used.

    ``update_state(codes)`` adds the int code ids of any shape (e.g.
    ``VectorQuantizer(...)(z)["codes"]``, ``(batch, height, width)``) to a
    histogram of ``num_codes`` bins; every id must be in ``[0, num_codes)``
    (out-of-range ids are refused, not dropped: a ValueError for concrete
    values, an InvalidArgumentError from an in-graph assertion in a
    ``tf.function``). ``result()`` is ``code_statistics`` of the histogram,
    a dict ``{"code_perplexity", "codes_used"}`` of float32 scalars (Keras
    reports each key in ``model.metrics`` results); the empty histogram
    gives 0.0 for both. ``reset_state()`` empties it.

    The histogram is float64: exact counts up to 2^53, where float32 stops
    counting at 2^24 = 16.8M per code, which one ImageNet epoch of 32 x 32
    latents (1.3G positions) passes if the codebook collapses. It
    aggregates by sum, so under ``MirroredStrategy`` the result is the
    histogram of every replica's codes.

        usage = CodeUsage(4)
        usage.update_state([0, 0, 1])
        usage.update_state([1, 2, 2])
        usage.result()  # code_perplexity 3.0, codes_used 0.75 (counts 2, 2, 2, 0)
    """

    def __init__(self, num_codes, name="code_usage", dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.num_codes = _check_num_codes(num_codes)
        self.counts = self.add_variable(
            shape=(self.num_codes,),
            initializer="zeros",
            dtype="float64",
            aggregation="sum",
            name="counts",
        )

    def update_state(self, codes, sample_weight=None):
        if sample_weight is not None:
            raise ValueError(
                "CodeUsage counts every code id once; sample_weight is not supported, got "
                f"{type(sample_weight).__name__}."
            )
        codes = tf.convert_to_tensor(codes)
        if not codes.dtype.is_integer:
            raise ValueError(f"CodeUsage expects integer code ids, got dtype {codes.dtype.name}.")
        codes = tf.reshape(tf.cast(codes, "int32"), (-1,))
        low, high = tf.reduce_min(codes), tf.reduce_max(codes)
        if tf.executing_eagerly():
            if tf.size(codes) > 0 and (int(low) < 0 or int(high) >= self.num_codes):
                raise ValueError(
                    f"CodeUsage '{self.name}' expects code ids in [0, {self.num_codes}), got "
                    f"ids from {int(low)} to {int(high)}."
                )
            checks = []
        else:
            in_range = tf.logical_or(
                tf.equal(tf.size(codes), 0),
                tf.logical_and(low >= 0, high < self.num_codes),
            )
            checks = [
                tf.debugging.Assert(
                    in_range,
                    [
                        f"CodeUsage '{self.name}' expects code ids in [0, {self.num_codes}), got "
                        "ids from (min, max):",
                        low,
                        high,
                    ],
                )
            ]
        with tf.control_dependencies(checks):
            # A segment sum, not a one-hot sum: no (positions, num_codes)
            # temporary (64 x 32 x 32 x 512 floats would be 128 MB).
            counts = tf.math.unsorted_segment_sum(
                tf.ones_like(codes, dtype="float64"), codes, self.num_codes
            )
        self.counts.assign_add(counts)

    def result(self):
        counts = tf.convert_to_tensor(self.counts)
        total = tf.reduce_sum(counts)
        p = counts / tf.maximum(total, 1.0)
        entropy = -tf.reduce_sum(p * tf.math.log(tf.where(p > 0, p, tf.ones_like(p))))
        # exp(0) = 1 for an empty histogram: report 0, as code_statistics does.
        perplexity = tf.where(total > 0, tf.exp(entropy), tf.zeros_like(entropy))
        used = tf.reduce_mean(tf.cast(counts > 0, "float64"))
        return {
            "code_perplexity": tf.cast(perplexity, "float32"),
            "codes_used": tf.cast(used, "float32"),
        }

    def get_config(self):
        config = super().get_config()
        config.update(num_codes=self.num_codes)
        return config
