"""MultiMNIST: pairs of overlapping MNIST digits (Sabour et al. 2017, Sec. 6).

    ds = caps_zoo.data.load("multi_mnist", "train", batch_size=128, seed=0)
    for merged, targets in ds:
        merged                  # float32 (batch, 36, 36, 1) in [0, 1]
        targets["labels_2hot"]  # float32 (batch, 10): one_hot(a) + one_hot(b)
        targets["label_ids"]    # int32 (batch, 2): [a, b], a != b
        targets["digits"]       # float32 (batch, 2, 36, 36, 1): the two shifted
                                # source digits, in the order of label_ids
                                # (the reconstruction targets)

Built on the fly from real MNIST (``caps_zoo.data.load_arrays("mnist", ...)``,
so from ``$CAPS_ZOO_DATA/mnist.npz`` or Keras' cache; test pairs with
``limit`` <= 1,000 from the package's ``mnist_sample``, the same images). Every element pairs a
*base* image (each image of the split is the base of its pairs) with a
*partner*: another image of the same split (the same subset when ``limit``
is given) with a different label, uniform over all such images. Each digit
is padded to 36x36 (its 28x28 frame centred: 4 px each side) and shifted
independently by integers ``dy, dx`` in ``[-max_shift, max_shift]`` (zero
fill, no wrap-around); the merge is ``min(a + b, 1)`` (not a pixel-wise max).

Shifts and cropping: ``max_shift`` is an integer in ``[0, MAX_SHIFT]`` (8);
default 4 (the paper's training set). Up to 4 the whole 28x28 frame stays on
the canvas. Above 4 (the official code's test set used 6) the frame's part
that leaves the 36x36 canvas is cropped: the canvas shows exactly what of
the shifted frame lies on it, and ``digits`` holds the same cropped digits
as the merged image. MNIST's ink lies mostly in the frame's central 20x20
box, so moderate crops lose little or nothing; beyond 8 the box itself would
leave the canvas, hence the bound.

Splits (as in ``caps_zoo.data``):

- ``"train"``: fresh pairs every epoch: the base images in a new random
  order, a new random partner and new shifts for every base image. One pass
  gives one pair per image (60,000, or 55,000 with
  ``holdout_validation=True``, which leaves the validation images out, as
  bases and as partners). ``seed`` makes the sequence of epochs repeatable
  (two datasets with the same seed give the same epochs; each epoch still
  differs from the last); ``seed=None`` draws them from TensorFlow's global
  seed.
- ``"test"`` and ``"validation"`` (the last ``validation_size`` training
  images): fixed pairs, ``partners`` (K) per image, the same on every call
  and machine: partners and shifts come from
  ``np.random.default_rng((FIXED_PAIRS_SEED, split index))`` over the
  split's images (after ``limit``), never from a global seed, and ``seed`` is
  ignored. Pairs come out in image order, the K pairs of image i at
  positions ``i*K .. i*K+K-1`` (each with its own partner and shifts). K=10
  gives 100,000 test pairs. Validation pairs are built among the validation
  images only. Changing ``limit`` or ``partners`` changes the draw.

``load_arrays("multi_mnist", ...)`` is refused: the pairs exist only as the
pipeline. ``caps_zoo.data.num_examples("multi_mnist", split, ...)`` gives
the pairs per pass.

The pipeline works on whole batches (index arithmetic, one batched matmul
per digit to place it on the canvas), fast enough to feed a CapsNet many
times over (``benchmarks/benchmark_multi_mnist.py``).
"""

import numpy as np
import tensorflow as tf

from caps_zoo import checks

NAME = "multi_mnist"
CANVAS = 36
DIGIT = 28
MARGIN = (CANVAS - DIGIT) // 2  # 4
MAX_SHIFT = 8
DEFAULT_MAX_SHIFT = 4
NUM_CLASSES = 10
SPLITS = ("train", "validation", "test")
FIXED_PAIRS_SEED = 20171026  # the CapsNet paper's arXiv date


def check_max_shift(max_shift):
    """``int(max_shift)``, or a ValueError unless an integer in [0, MAX_SHIFT]."""
    if not checks.is_integer(max_shift) or not 0 <= max_shift <= MAX_SHIFT:
        raise ValueError(
            f"max_shift must be an integer from 0 to {MAX_SHIFT} (pixels each way on the "
            f"{CANVAS}x{CANVAS} canvas; above {MARGIN} the 28x28 frame is cropped at the canvas edge, "
            f"above {MAX_SHIFT} the digits themselves would leave it), got {max_shift!r}.")
    return int(max_shift)


def check_partners(partners):
    """``int(partners)``, or a ValueError unless an integer >= 1."""
    return checks.check_count("partners (pairs per test / validation image)", partners)


def _check_split(split):
    if split not in SPLITS:
        raise ValueError(f"Unknown split '{split}' for '{NAME}'; choose one of {', '.join(SPLITS)}.")


def _partner_table(labels):
    """``(order, starts, counts)``: the images sorted by label (stable), where
    each label's run starts, and its size; refuses a set of one class."""
    labels = np.asarray(labels).astype(np.int64)
    counts = np.bincount(labels, minlength=NUM_CLASSES)
    if len(labels) == 0 or counts.max() == len(labels):
        raise ValueError(
            f"'{NAME}' pairs digits of different classes, but the {len(labels)} image(s) given "
            f"(after limit) have {np.count_nonzero(counts)} class(es); pass a larger limit.")
    order = np.argsort(labels, kind="stable")
    starts = np.cumsum(counts) - counts
    return order, starts, counts


def _partner_index(uniform, base_labels, order, starts, counts, xp):
    """Partners uniform over the images of other labels: ``uniform`` in
    [0, 1) picks a position among the ``n - count[a]`` images outside label
    a's run in ``order`` (``xp``: numpy, or a TF namespace with the same
    ops)."""
    n = order.shape[0]
    own = xp.gather(counts, base_labels)
    start = xp.gather(starts, base_labels)
    others = n - own
    position = xp.minimum(xp.floor(uniform * xp.cast_float(others)), xp.cast_float(others - 1))
    position = xp.cast_int(position)
    position = position + xp.where(position >= start, own, xp.zeros_like(own))
    return xp.gather(order, position)


class _NumpyOps:
    gather = staticmethod(lambda values, index: np.asarray(values)[index])
    minimum, floor, where, zeros_like = np.minimum, np.floor, np.where, np.zeros_like
    cast_float = staticmethod(lambda x: np.asarray(x, np.float64))
    cast_int = staticmethod(lambda x: np.asarray(x, np.int64))


class _TFOps:
    gather = staticmethod(tf.gather)
    minimum, floor, where, zeros_like = tf.minimum, tf.floor, tf.where, tf.zeros_like
    cast_float = staticmethod(lambda x: tf.cast(x, tf.float64))
    cast_int = staticmethod(lambda x: tf.cast(x, tf.int64))


def place(digits, shifts):
    """28x28 digits ``(m, 28, 28)`` on the 36x36 canvas, shifted by
    ``shifts`` ``(m, 2)`` int (rows, columns; positive: down, right): canvas
    pixel ``(r, c)`` is digit pixel ``(r - 4 - dy, c - 4 - dx)``, zero where
    that is outside the digit (no wrap-around; cropped above 4)."""
    shifts = tf.cast(shifts, tf.int32)
    canvas = tf.range(CANVAS)[None, :, None]
    source = tf.range(DIGIT)[None, None, :]

    def selector(shift):  # (m, 36, 28): 1 where canvas row r takes digit row r - 4 - shift
        return tf.cast(tf.equal(source, canvas - MARGIN - shift[:, None, None]), digits.dtype)

    return tf.matmul(tf.matmul(selector(shifts[:, 0]), digits), selector(shifts[:, 1]), transpose_b=True)


def merge(first, second):
    """The MultiMNIST merge of two canvases: ``min(a + b, 1)``."""
    return tf.minimum(first + second, 1.0)


def compose(images, labels, base, partner, shifts):
    """The batch of pairs ``(merged, targets)`` (see the module's docstring).

    Args:
        images: uint8 ``(n, 28, 28)`` (0-255) or float ``(n, 28, 28)`` in
            [0, 1].
        labels: int ``(n,)``.
        base, partner: int ``(batch,)`` indices into ``images``.
        shifts: int ``(batch, 4)``: ``dy, dx`` of the base, then of the partner.
    """
    images = tf.convert_to_tensor(images)
    index = tf.stack([base, partner], axis=1)  # (batch, 2)
    digits = tf.gather(images, tf.reshape(index, [-1]))
    if digits.dtype == tf.uint8:
        digits = tf.cast(digits, tf.float32) / 255.0
    digits = tf.cast(digits, tf.float32)
    placed = place(digits, tf.reshape(shifts, [-1, 2]))
    placed = tf.reshape(placed, [-1, 2, CANVAS, CANVAS, 1])
    label_ids = tf.cast(tf.gather(tf.convert_to_tensor(labels), index), tf.int32)
    targets = {
        "labels_2hot": tf.reduce_sum(tf.one_hot(label_ids, NUM_CLASSES, dtype=tf.float32), axis=1),
        "label_ids": label_ids,
        "digits": placed,
    }
    return merge(placed[:, 0], placed[:, 1]), targets


def fixed_pairs(labels, split, max_shift, partners):
    """The fixed pairs of a test / validation split: int64 ``(n*K, 6)``
    (base, partner, dy, dx of the base, dy, dx of the partner), from
    ``np.random.default_rng((FIXED_PAIRS_SEED, split index))``."""
    order, starts, counts = _partner_table(labels)
    labels = np.asarray(labels).astype(np.int64)
    rng = np.random.default_rng((FIXED_PAIRS_SEED, SPLITS.index(split)))
    base = np.repeat(np.arange(len(labels), dtype=np.int64), partners)
    partner = _partner_index(rng.random(len(base)), labels[base], order, starts, counts, _NumpyOps)
    shifts = rng.integers(-max_shift, max_shift + 1, size=(len(base), 4))
    return np.concatenate([base[:, None], partner[:, None], shifts], axis=1).astype(np.int64)


# The package's mnist_sample is the first 1,000 MNIST test images.
PACKAGED_TEST_IMAGES = 1000


def _source_arrays(split, limit, holdout_validation, validation_size):
    from caps_zoo import data  # the package imports this module lazily

    if limit is not None:
        limit = checks.check_count("limit", limit)
    # Test pairs among the first 1,000 test images (bases and partners) are
    # built from the copy inside the package: the same images, no download,
    # so the shipped MultiMNIST weights can be checked offline.
    source = "mnist_sample" if split == "test" and limit is not None and limit <= PACKAGED_TEST_IMAGES else "mnist"
    images, labels = data.load_arrays(source, split, holdout_validation, validation_size)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return images, labels


def load(split="train", batch_size=128, seed=None, max_shift=DEFAULT_MAX_SHIFT, partners=1, limit=None,
         holdout_validation=False, validation_size=None, drop_remainder=False, repeat=False):
    """A batched ``tf.data.Dataset`` of ``(merged, targets)`` pairs (see the
    module's docstring; ``caps_zoo.data.load("multi_mnist", ...)`` calls this).

    Args:
        split: ``train`` (fresh pairs every epoch), ``validation`` or
            ``test`` (fixed pairs).
        batch_size: pairs per batch.
        seed: makes the training pairs repeatable; ignored by the fixed splits.
        max_shift: shift of each digit, integer pixels each way, 0 to 8
            (above 4 cropped at the canvas edge).
        partners: pairs per image for ``validation`` and ``test`` (K); the
            training split always makes one per image per epoch.
        limit: use only the first ``limit`` images of the split (bases and
            partners both among them).
        holdout_validation, validation_size: as in ``caps_zoo.data.load``.
        drop_remainder, repeat: as in ``caps_zoo.data.load``.
    """
    _check_split(split)
    max_shift = check_max_shift(max_shift)
    partners = check_partners(partners)
    batch_size = checks.check_count("batch_size", batch_size)
    if validation_size is None:
        from caps_zoo.data import VALIDATION_SIZE as validation_size
    images, labels = _source_arrays(split, limit, holdout_validation, validation_size)
    order, starts, counts = _partner_table(labels)
    images_t = tf.constant(images)
    labels_t = tf.constant(labels.astype(np.int32))

    if split != "train":
        pairs = fixed_pairs(labels, split, max_shift, partners)
        dataset = tf.data.Dataset.from_tensor_slices(pairs)
        if repeat:
            dataset = dataset.repeat()
        dataset = dataset.batch(batch_size, drop_remainder=drop_remainder).map(
            lambda p: compose(images_t, labels_t, p[:, 0], p[:, 1], p[:, 2:]),
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return dataset.prefetch(tf.data.AUTOTUNE)

    order_t, starts_t, counts_t = (tf.constant(a.astype(np.int64)) for a in (order, starts, counts))
    labels64 = tf.constant(labels.astype(np.int64))

    def training_batch(base, pair_seed):
        partner_seed, shift_seed = tf.unstack(tf.random.split(pair_seed, 2))
        size = tf.shape(base)[0]
        uniform = tf.random.stateless_uniform([size], seed=partner_seed, dtype=tf.float64)
        partner = _partner_index(uniform, tf.gather(labels64, base), order_t, starts_t, counts_t, _TFOps)
        shifts = tf.random.stateless_uniform([size, 4], seed=shift_seed, minval=-max_shift,
                                             maxval=max_shift + 1, dtype=tf.int32)
        return compose(images_t, labels_t, base, partner, shifts)

    from caps_zoo.data import _per_example_seeds  # one seed pair per batch here

    dataset = tf.data.Dataset.range(len(labels)).shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    dataset = tf.data.Dataset.zip((dataset, _per_example_seeds(seed))).map(
        training_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.prefetch(tf.data.AUTOTUNE)


def num_examples(split, limit=None, holdout_validation=False, validation_size=None, partners=1):
    """Pairs per pass: one per image for ``train``, images x ``partners``
    for ``validation`` and ``test``."""
    _check_split(split)
    partners = check_partners(partners)
    if validation_size is None:
        from caps_zoo.data import VALIDATION_SIZE as validation_size
    count = len(_source_arrays(split, limit, holdout_validation, validation_size)[1])
    return count if split == "train" else count * partners
