"""The zoo's one data layer: ``tf.data`` pipelines of real image datasets.

    ds = caps_zoo.data.load("mnist", "train", batch_size=128)
    ds = caps_zoo.data.load("cifar10", "train", batch_size=128)          # (b, 32, 32, 3)
    ds = caps_zoo.data.load("tfds:cifar100", "test", batch_size=128)     # any tfds image dataset
    ds = caps_zoo.data.load("tfds:celeb_a", "train", image_size=(64, 64))

The datasets (``DATASETS``): ``mnist``, ``fashion_mnist``, ``cifar10``
(32x32x3) and ``mnist_sample``; ``"tfds:<name>"`` reads any image dataset of
tensorflow-datasets (an optional extra, ``pip install "caps_zoo[tfds]"``;
see ``caps_zoo.data.tfds_source``). Where the arrays come from, in order:

1. ``$CAPS_ZOO_DATA/<name>.npz`` (Keras' npz layout: ``x_train``,
   ``y_train``, ``x_test``, ``y_test``, uint8), for offline machines;
2. for ``mnist`` and ``fashion_mnist``: Keras' own loader (its cache in
   ``~/.keras/datasets``, else a download);
3. tensorflow-datasets, if installed: its data_dir, else (``download=True``,
   the default) a download into it; for ``"tfds:<name>"`` the only source;
4. otherwise a ``DataUnavailableError`` that says what was tried and names
   the fixes (a ``TFDSNotInstalledError`` when tfds was needed and is missing).

The order keeps the images of the npz files and of Keras' loader first:
tfds holds MNIST in another order, so through it the validation split (the
last 5,000 training images) is other images.

``mnist_sample`` is 1,000 real MNIST test images shipped inside the package
(the first 1,000 of the test split), for the demo and fast tests.

``multi_mnist`` (overlapping pairs of MNIST digits, Sabour et al. 2017) is
built on the fly from MNIST by ``load`` and ``num_examples``; it has no
arrays. See ``caps_zoo.data.multi_mnist`` for its elements and splits.

Splits (``SPLITS``):

- ``"train"``: all training images (60,000 for MNIST; what the shipped runs
  before validation splits trained on), or with ``holdout_validation=True``
  all but the last ``validation_size`` of them (55,000);
- ``"validation"``: the last ``validation_size`` training images
  (``VALIDATION_SIZE`` = 5,000 by default), disjoint from the held-out
  training split: where epochs are chosen and training stops early, so that
  the test split is looked at once, for the figure that ships;
- ``"test"``: the test images (for a tfds dataset with no test split, such
  as ImageNet, its validation split: see ``caps_zoo.data.tfds_source``).

The validation size does not scale with the dataset: a dataset with no more
than ``validation_size`` training images raises a ``ValueError`` that names
both sizes (tests on tiny datasets pass a small ``validation_size``).
``mnist_sample`` has only the test split.

Images come out float32 in [0, 1], shape ``(height, width, channels)`` as
stored: ``(28, 28, 1)`` for MNIST, ``(32, 32, 3)`` for CIFAR-10; labels
int32. No image is resized or cropped unless ``image_size=(height, width)``
is given (central crop to that aspect ratio, then resize; see
``caps_zoo.data.resizing``); tfds datasets whose images vary in size need it.

Binarized MNIST (for the Bernoulli likelihood of DRAW and DCRW), with
``binarize=``:

- ``"stochastic"``: every pixel is 1 with probability its intensity, drawn
  anew every epoch (dynamic binarization; training);
- ``"fixed"``: one such draw with a fixed seed (``FIXED_BINARIZATION_SEED``),
  the same on every call and machine: the test set on which bounds are
  reported, and the validation split on which epochs are chosen (a draw
  over the split's own images, equally repeatable). This is the procedure of the standard fixed binarization
  (Larochelle & Murray 2011, used by the DRAW paper), but not its draw, which
  is a separate download; numbers are close, not identical.
- ``"threshold"``: intensity > 0.5 (an easier, deterministic task; not
  comparable with published bounds).
"""

import difflib
import os
from pathlib import Path

import numpy as np
import tensorflow as tf

# The datasets, splits and binarizations by name, and the validation size:
# defined without TensorFlow, for the recipes' parsers (issue 15).
from caps_zoo_options.datasets import (  # noqa: F401  (caps_zoo.data's names too)
    BINARIZATIONS,
    DATASETS,
    GENERATED_DATASETS,
    SPLITS,
    VALIDATION_SIZE,
    check_binarize,
)

DATA_ENV = "CAPS_ZOO_DATA"
SAMPLE_PATH = Path(__file__).resolve().parent / "mnist_test_sample.npz"

_KERAS_LOADERS = {
    "mnist": lambda: __import__("keras").datasets.mnist.load_data(),
    "fashion_mnist": lambda: __import__("keras").datasets.fashion_mnist.load_data(),
}
# The named datasets' tensorflow-datasets names: their last source (cifar10's
# only one after a local npz).
_TFDS_NAMES = {"mnist": "mnist", "fashion_mnist": "fashion_mnist", "cifar10": "cifar10"}
TFDS_PREFIX = "tfds:"  # "tfds:<name>": any image dataset of tensorflow-datasets
FIXED_BINARIZATION_SEED = 20151104


class DataUnavailableError(RuntimeError):
    """Neither a local copy nor a download of the dataset could be had."""


class TFDSNotInstalledError(DataUnavailableError, ImportError):
    """A dataset needs tensorflow-datasets, which is not installed (says how
    to install it)."""


def is_tfds_name(name):
    """Whether ``name`` is of the form ``"tfds:<name>"``."""
    return isinstance(name, str) and name.startswith(TFDS_PREFIX)


def _unknown_dataset_message(name):
    choices = DATASETS + GENERATED_DATASETS
    close = difflib.get_close_matches(str(name), choices, n=3, cutoff=0.6)
    try:
        import tensorflow_datasets as tfds

        # the community index would need the network
        if str(name) in tfds.list_builders(with_community_datasets=False):
            close.append(TFDS_PREFIX + str(name))
    except ImportError:
        pass  # without tfds there is no tfds name to suggest
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return (f"Unknown dataset '{name}'.{hint} Choose one of {', '.join(choices)}, or "
            f"'{TFDS_PREFIX}<name>' for any image dataset of tensorflow-datasets (e.g. '{TFDS_PREFIX}cifar100').")


def _check(name, split, holdout_validation=False):
    if name in GENERATED_DATASETS:
        raise ValueError(
            f"'{name}' has no arrays: its pairs are made on the fly by caps_zoo.data.load('{name}', ...) "
            "(for the source digits use load_arrays('mnist', ...)).")
    if is_tfds_name(name):
        if name == TFDS_PREFIX:
            raise ValueError(f"'{TFDS_PREFIX}' needs a tensorflow-datasets name after it, e.g. "
                             f"'{TFDS_PREFIX}cifar100'.")
    elif name not in DATASETS:
        raise ValueError(_unknown_dataset_message(name))
    if split not in SPLITS:
        raise ValueError(f"Unknown split '{split}'; choose one of {', '.join(SPLITS)}.")
    if name == "mnist_sample" and split != "test":
        raise ValueError("'mnist_sample' has only the 'test' split (real MNIST test images).")
    if holdout_validation and split != "train":
        raise ValueError(
            f"holdout_validation applies to the 'train' split (it leaves the 'validation' images "
            f"out of it), not to '{split}'."
        )


def _validation_start(name, train_count, validation_size):
    """Index of the first validation image: the last ``validation_size`` of
    ``train_count`` training images, leaving at least one to train on."""
    if isinstance(validation_size, bool) or not isinstance(validation_size, (int, np.integer)):
        raise ValueError(f"validation_size must be an integer, got {validation_size!r}.")
    if validation_size < 1:
        raise ValueError(f"validation_size must be >= 1, got {validation_size}.")
    if validation_size >= train_count:
        raise ValueError(
            f"'{name}' has {train_count:,} training images: too few for a validation split of "
            f"{validation_size:,} (the last {validation_size:,} training images) with any left "
            "to train on. Pass a validation_size below the number of training images."
        )
    return train_count - validation_size


NPZ_LAYOUT = ("Keras' npz layout: x_train, y_train, x_test, y_test; uint8 images (n, 28, 28), or "
              "(n, 32, 32, 3) for colour; labels (n,) in 0-9")


class DataFileError(ValueError):
    """A dataset file that is not an MNIST-style npz (names its path)."""


def _read_npz(path, split):
    """``x_<split>``, ``y_<split>`` of an npz in Keras' layout, checked: uint8
    images ``(n, h, w)``, or ``(n, h, w, c)`` for colour (float arrays were
    rescaled by /255 a second time), integer labels ``(n,)`` (or Keras'
    CIFAR ``(n, 1)``) in [0, 9]; every error names the file. Single-channel
    images come out ``(n, h, w)``, labels ``(n,)``."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [key for key in (f"x_{split}", f"y_{split}") if key not in archive.files]
            if missing:
                raise DataFileError(f"'{path}' has no {' or '.join(missing)} (it has {sorted(archive.files)}); "
                                    f"expected {NPZ_LAYOUT}.")
            images, labels = archive[f"x_{split}"], archive[f"y_{split}"]
    except DataFileError:
        raise
    except Exception as error:  # zipfile, pickle and OS errors come in many types
        raise DataFileError(f"'{path}' is not a readable npz ({type(error).__name__}: {error}); "
                            f"expected {NPZ_LAYOUT}.") from error
    colour_channels = images.shape[-1] if images.ndim == 4 else 1
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or colour_channels not in (1, 3):
        raise DataFileError(f"'{path}': x_{split} must be uint8 images (n, height, width) or (n, height, width, "
                            f"1 or 3); got dtype {images.dtype}, shape {images.shape}. Store the 0-255 pixels as "
                            "uint8 (the zoo divides by 255 itself).")
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]  # one layout for single-channel images, Keras' (n, h, w)
    if labels.ndim == 2 and labels.shape[1:] == (1,):
        labels = labels[:, 0]  # Keras' CIFAR loaders give (n, 1)
    if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
        raise DataFileError(f"'{path}': y_{split} must be integer labels ({len(images)},); got dtype "
                            f"{labels.dtype}, shape {labels.shape}.")
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise DataFileError(f"'{path}': y_{split} must be class ids 0-9; got {labels.min()} to {labels.max()}.")
    return images, labels


def load_arrays(name, split, holdout_validation=False, validation_size=VALIDATION_SIZE, *,
                image_size=None, download=True):
    """``(images uint8, labels (n,))`` of one split: images ``(n, h, w)`` for
    single-channel datasets (MNIST: ``(n, 28, 28)``), ``(n, h, w, c)`` for
    colour (CIFAR-10: ``(n, 32, 32, 3)``); integer labels (uint8 from npz
    files and Keras, int32 through tfds; -1 for tfds datasets without labels).

    ``"validation"`` is the last ``validation_size`` training images;
    ``"train"`` with ``holdout_validation=True`` the ones before them (the two
    never overlap), without it all of them.

    ``image_size``: ``(height, width)`` to crop and resize every image to
    (``caps_zoo.data.resizing``); None keeps them as stored. ``download``:
    whether tensorflow-datasets may download a dataset its data_dir lacks
    (False: only prepared data; offline that fails at once instead of after
    tfds' retries). Neither changes the npz files or Keras' loader, which are
    read first.
    """
    _check(name, split, holdout_validation)
    if split == "test":
        return _stored_arrays(name, "test", image_size, download)
    images, labels = _stored_arrays(name, "train", image_size, download)
    if split == "train" and not holdout_validation:
        return images, labels
    start = _validation_start(name, len(labels), validation_size)
    if split == "validation":
        return images[start:], labels[start:]
    return images[:start], labels[:start]


def _stored_arrays(name, split, image_size=None, download=True):
    """The arrays as stored (or resized to ``image_size``): ``split`` is
    ``"train"`` or ``"test"``."""
    from caps_zoo.data import resizing, tfds_source  # tfds_source imports tensorflow-datasets only when read

    if is_tfds_name(name):
        return tfds_source.read_split(name[len(TFDS_PREFIX):], split, image_size, download)
    image_size = resizing.check_image_size(image_size)
    if name == "mnist_sample":
        images, labels = _read_npz(SAMPLE_PATH, split)
        return resizing.resize_arrays(images, image_size), labels
    local_dir = os.environ.get(DATA_ENV)
    if local_dir:
        local_path = Path(local_dir) / f"{name}.npz"
        if local_path.is_file():
            images, labels = _read_npz(local_path, split)
            return resizing.resize_arrays(images, image_size), labels
    looked = f"'{local_dir}/{name}.npz' (not found)" if local_dir else f"${DATA_ENV} (unset)"
    tried = [f"a local copy at {looked}"]
    fixes = [f"set {DATA_ENV} to a folder holding {name}.npz ({NPZ_LAYOUT})"]
    if name in _KERAS_LOADERS:
        try:
            (x_train, y_train), (x_test, y_test) = _KERAS_LOADERS[name]()
        except Exception as error:  # network errors come in many types
            tried.append(f"Keras' loader: its download failed ({type(error).__name__}: {error})")
            fixes.append(f"connect to the internet so that keras.datasets.{name}.load_data() can download it "
                         "once into ~/.keras/datasets")
        else:
            images, labels = (x_train, y_train) if split == "train" else (x_test, y_test)
            return resizing.resize_arrays(images, image_size), labels
    # Where Keras' own download just failed, tfds' would fail too, after
    # minutes of retries offline (measured: 204 s): it only reads data
    # already prepared in its data_dir. Datasets Keras cannot fetch download.
    keras_tried = name in _KERAS_LOADERS
    try:
        return tfds_source.read_split(_TFDS_NAMES[name], split, image_size, download and not keras_tried)
    except TFDSNotInstalledError as error:
        tried.append("tensorflow-datasets: not installed")
        fixes.append(f"install tensorflow-datasets ({tfds_source.INSTALL_COMMAND}) to read it through tfds "
                     "(downloaded once into its data_dir, or from one prepared elsewhere)")
        unavailable, cause = TFDSNotInstalledError, error
    except tfds_source.TFDSUnavailableError as error:
        tried.append(f"tensorflow-datasets: {error.tried}")
        fixes.append(error.hint)
        unavailable, cause = DataUnavailableError, error
    attempts = "; ".join(f"({number}) {attempt}" for number, attempt in enumerate(tried, 1))
    message = f"Could not load '{name}'. Tried {attempts}. To provide it: {'; or '.join(fixes)}."
    raise unavailable(message) from cause


def as_float_images(images):
    """uint8 images ``(n, h, w)`` as float32 ``(n, h, w, 1)`` in [0, 1];
    colour images ``(n, h, w, c)`` keep their channels."""
    images = images.astype("float32") / 255.0
    return images[..., None] if images.ndim == 3 else images


def load_images(name, split, holdout_validation=False, validation_size=VALIDATION_SIZE, *,
                image_size=None, download=True, channels=None):
    """All images of one split as float32 ``(n, h, w, c)`` in [0, 1] (numpy;
    MNIST ``(n, 28, 28, 1)``); the split and the options as in ``load_arrays``;
    ``channels`` as in ``load``."""
    from caps_zoo.data import resizing

    return resizing.convert_channels(as_float_images(load_arrays(
        name, split, holdout_validation, validation_size, **_source_options(image_size, download))[0]), channels)


def _source_options(image_size, download):
    """The source options that differ from their defaults: passed to
    ``load_arrays`` only then, so that code wrapping ``load_arrays``' first
    four arguments (recording which splits a training reads) keeps working."""
    options = {}
    if image_size is not None:
        options["image_size"] = image_size
    if download is not True:
        options["download"] = download
    return options


def _refuse_source_options_for_pairs(image_size, download):
    given = _source_options(image_size, download)
    if given:
        raise ValueError(f"{' and '.join(repr(option) for option in given)} do not apply to 'multi_mnist' "
                         f"(its 36x36 pairs are made from load_arrays('mnist')); got {given}.")


def _random_shift(image, max_shift, seed):
    """Translate one image by up to ``max_shift`` pixels each way, filling
    with black (Sabour et al.): pad, then crop back at a random offset."""
    size = tf.shape(image)[:2]
    padded = tf.pad(image, [[max_shift, max_shift], [max_shift, max_shift], [0, 0]])
    offsets = tf.random.stateless_uniform(
        (2,), seed=seed, minval=0, maxval=2 * max_shift + 1, dtype=tf.int32
    )
    return tf.slice(padded, [offsets[0], offsets[1], 0], [size[0], size[1], -1])


def _bernoulli(image, seed):
    """Pixels set to 1 with probability their intensity (a stateless draw)."""
    uniform = tf.random.stateless_uniform(tf.shape(image), seed=seed)
    return tf.cast(uniform < image, image.dtype)


def binarize_fixed(images):
    """The ``"fixed"`` binarization of float images in [0, 1] (numpy, repeatable)."""
    rng = np.random.default_rng(FIXED_BINARIZATION_SEED)
    return (rng.random(images.shape, dtype=np.float32) < images).astype(np.float32)


def _per_example_seeds(seed):
    # One stateless seed pair per example, from a stream that `seed` fixes
    # and that draws anew every epoch: repeatable, yet new every epoch.
    return tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)


def load(
    name="mnist",
    split="train",
    batch_size=128,
    shuffle=None,
    shift_pixels=None,
    limit=None,
    seed=None,
    drop_remainder=False,
    repeat=False,
    binarize=None,
    holdout_validation=False,
    validation_size=VALIDATION_SIZE,
    max_shift=None,
    partners=None,
    image_size=None,
    download=True,
    channels=None,
):
    """A batched ``tf.data.Dataset`` of ``(images, labels)``; for
    ``multi_mnist`` of ``(merged, targets)`` (see ``caps_zoo.data.multi_mnist``).

    Args:
        name: ``mnist``, ``fashion_mnist``, ``cifar10``, ``mnist_sample``,
            ``multi_mnist``, or ``"tfds:<name>"`` (any tensorflow-datasets
            image dataset; see ``caps_zoo.data.tfds_source``).
        split: ``train``, ``validation`` or ``test`` (see the module's
            docstring); ``validation`` behaves like ``test``: unshuffled,
            unshifted by default.
        shuffle: defaults to True for ``train``.
        shift_pixels: random translation of up to this many pixels;
            defaults to 2 for ``train`` (Sabour et al.), 0 otherwise.
        limit: keep only the first ``limit`` examples (fast tests, subsets).
        seed: makes shuffling and shifts repeatable (each epoch still
            draws new ones).
        drop_remainder: drop a last, smaller batch (training under
            tf.distribute, where replicas should get equal shares).
        binarize: None, ``"stochastic"``, ``"fixed"`` or ``"threshold"``
            (see the module's docstring); applied after the shifts.
        holdout_validation: for ``train``: leave out the last
            ``validation_size`` images (the ``validation`` split).
        validation_size: the size of the ``validation`` split.
        max_shift, partners: ``multi_mnist`` only: the shift of each digit
            (0 to 8 pixels each way, default 4) and the fixed pairs per
            validation / test image (default 1).
        image_size, download: as in ``load_arrays``: ``(height, width)`` to
            crop and resize the images to (None: as stored), and whether
            tensorflow-datasets may download.
        channels: 1 or 3 to convert the images (grey to colour repeats the
            channel; colour to grey takes the luma), None to keep them.
    """
    if name == "multi_mnist":
        from caps_zoo.data import multi_mnist

        for option, value, hint in (("shuffle", shuffle, "training pairs are always shuffled"),
                                    ("shift_pixels", shift_pixels, "use max_shift"),
                                    ("binarize", binarize, "its digits are not binarized")):
            if value is not None:
                raise ValueError(f"'{option}' does not apply to 'multi_mnist' ({hint}); got {value!r}.")
        _refuse_source_options_for_pairs(image_size, download)
        if channels is not None:
            raise ValueError(f"'channels' does not apply to 'multi_mnist' (grey pairs); got {channels!r}.")
        return multi_mnist.load(
            split, batch_size=batch_size, seed=seed,
            max_shift=multi_mnist.DEFAULT_MAX_SHIFT if max_shift is None else max_shift,
            partners=1 if partners is None else partners, limit=limit,
            holdout_validation=holdout_validation, validation_size=validation_size,
            drop_remainder=drop_remainder, repeat=repeat)
    for option, value in (("max_shift", max_shift), ("partners", partners)):
        if value is not None:
            raise ValueError(f"'{option}' applies only to 'multi_mnist', not to '{name}'.")
    check_binarize(binarize)
    images, labels = load_arrays(name, split, holdout_validation, validation_size,
                                 **_source_options(image_size, download))
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    training = split == "train"
    shuffle = training if shuffle is None else shuffle
    shift_pixels = (2 if training else 0) if shift_pixels is None else int(shift_pixels)
    if shift_pixels < 0:
        raise ValueError(f"shift_pixels must be >= 0, got {shift_pixels}.")

    from caps_zoo.data import resizing

    images = resizing.convert_channels(as_float_images(images), channels)
    if binarize == "fixed":
        images = binarize_fixed(images)
    elif binarize == "threshold":
        images = (images > 0.5).astype("float32")
    dataset = tf.data.Dataset.from_tensor_slices((images, labels.astype("int32")))
    if shuffle:
        dataset = dataset.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()
    if shift_pixels:
        dataset = tf.data.Dataset.zip((dataset, _per_example_seeds(seed))).map(
            lambda example, pair: (_random_shift(example[0], shift_pixels, pair), example[1]),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
    if binarize == "stochastic":
        # A different stream from the shifts' (seed + 1), so the two draws
        # are independent.
        stream_seed = None if seed is None else seed + 1
        dataset = tf.data.Dataset.zip((dataset, _per_example_seeds(stream_seed))).map(
            lambda example, pair: (_bernoulli(example[0], pair), example[1]),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    return dataset.prefetch(tf.data.AUTOTUNE)


def num_examples(name, split, limit=None, holdout_validation=False, validation_size=VALIDATION_SIZE,
                 partners=None, *, image_size=None, download=True):
    """The number of examples ``load`` gives with the same arguments (for
    ``multi_mnist``: pairs per pass, ``partners`` per image for the fixed
    splits). Counted by reading the split, as ``load`` does (tfds datasets
    whose images vary in size need the same ``image_size``)."""
    if name == "multi_mnist":
        from caps_zoo.data import multi_mnist

        _refuse_source_options_for_pairs(image_size, download)
        return multi_mnist.num_examples(split, limit, holdout_validation, validation_size,
                                        1 if partners is None else partners)
    if partners is not None:
        raise ValueError(f"'partners' applies only to 'multi_mnist', not to '{name}'.")
    count = len(load_arrays(name, split, holdout_validation, validation_size,
                            **_source_options(image_size, download))[1])
    return count if limit is None else min(limit, count)
