"""tensorflow-datasets (tfds) as a source of ``caps_zoo.data``: optional,
``pip install "caps_zoo[tfds]"``, imported only when a dataset needs it.

Two ways in, through ``caps_zoo.data.load`` / ``load_arrays`` /
``load_images`` / ``num_examples``:

- ``"cifar10"``, and ``"mnist"`` / ``"fashion_mnist"`` when neither
  ``$CAPS_ZOO_DATA/<name>.npz`` nor Keras' loader has them;
- ``"tfds:<name>"`` for any tfds image dataset, with tfds' own spelling of
  configs and versions: ``"tfds:cifar100"``, ``"tfds:svhn_cropped"``,
  ``"tfds:imagenet_resized/32x32"``, ``"tfds:celeb_a"``.

Where the data is: tfds' data_dir, ``$CAPS_ZOO_TFDS_DATA_DIR`` if set, else
tfds' default (``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets``). With
``download=True`` (the default) a dataset the data_dir lacks is downloaded
and prepared there once (``builder.download_and_prepare()``, what
``tfds.load(download=True)`` does); ``download=False`` reads only what is
prepared. Offline, a download fails only after tfds' retries (ten attempts
with growing waits, about 3.5 minutes); ``download=False`` fails at once.
Either way the error says what was tried and how to provide the data.

What comes out (the arrays of ``load_arrays``): uint8 images ``(n, h, w)``
for single-channel datasets (Keras' layout, as the npz files hold them),
``(n, h, w, c)`` otherwise; int32 labels ``(n,)``. The image is the
dataset's supervised input (``info.supervised_keys``), else its feature
``image``, else its only image feature; the label the supervised label or
the feature ``label`` if it is a class label; datasets without one
(``celeb_a``, ``lsun``) give labels -1. Images keep their size unless
``image_size`` is given (``caps_zoo.data.resizing``: central crop to the
aspect ratio, then resize); datasets whose images vary in size
(``imagenet2012``, ``coco``) need it.

Splits: the zoo's ``"train"`` is tfds' ``train``; ``"test"`` is tfds'
``test``, or its ``validation`` where there is no ``test`` (the labelled
held-out images of ``imagenette``, ``imagenet_resized``, and of
``imagenet2012`` as usually prepared, without its optional, unlabelled test
archive); the zoo's ``"validation"`` is, as for every
dataset, the last ``validation_size`` images of ``"train"``. Examples come
in tfds' order, fixed when the dataset was prepared and the same on every
read (``shuffle_files=False``). For MNIST that order is not Keras': the last
5,000 training images through tfds are other images than the npz's.

A split is read whole into memory, as the npz files are (CIFAR-10's
training split is 150 MB); for large datasets pass ``image_size`` to keep
them small. Datasets larger than memory are not streamed.
"""

import difflib
import os

import numpy as np
import tensorflow as tf

from caps_zoo.data import DataUnavailableError, TFDSNotInstalledError, resizing

TFDS_DATA_ENV = "CAPS_ZOO_TFDS_DATA_DIR"
INSTALL_COMMAND = 'pip install "caps_zoo[tfds]"'
SPLITS = ("train", "test")  # the stored splits; "validation" is cut from "train"
_READ_BATCH = 1024  # images per step when a split is read into memory


class TFDSUnavailableError(DataUnavailableError):
    """tensorflow-datasets could not provide a dataset: ``tried`` says what
    was tried and what failed, ``hint`` how to provide the data."""

    def __init__(self, name, tried, hint):
        super().__init__(f"Could not load 'tfds:{name}': {tried}. To provide it, {hint}.")
        self.tried, self.hint = tried, hint


def import_tfds(needed_for):
    """The ``tensorflow_datasets`` module, or a ``TFDSNotInstalledError`` that
    says how to install it (``needed_for``: what asked, for the message)."""
    try:
        import tensorflow_datasets
    except ImportError as error:
        raise TFDSNotInstalledError(
            f"{needed_for} needs tensorflow-datasets, which is not installed ({error}). Install it with "
            f"{INSTALL_COMMAND} (tensorflow-datasets 4.9.10 and importlib_resources)."
        ) from error
    return tensorflow_datasets


def data_dir():
    """``$CAPS_ZOO_TFDS_DATA_DIR``, or None for tfds' default data_dir."""
    return os.environ.get(TFDS_DATA_ENV) or None


def check_name(tfds, name):
    """Refuse a ``name`` (``dataset[/config][:version]``) whose dataset tfds
    does not know, naming the close matches."""
    dataset = name.split(":")[0].split("/")[0]
    known = tfds.list_builders(with_community_datasets=False)  # the community index would need the network
    if dataset not in known:
        close = difflib.get_close_matches(dataset, known, n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(repr('tfds:' + c) for c in close)}?" if close else ""
        raise ValueError(f"Unknown tensorflow-datasets dataset '{dataset}' (in 'tfds:{name}').{hint} "
                         "The names are those of tensorflow_datasets.list_builders().")


def _feature_keys(tfds, info, name):
    """``(image key, label key or None)`` of a dataset's features (see the
    module's docstring)."""
    features = info.features
    images = [key for key, feature in features.items() if isinstance(feature, tfds.features.Image)]
    supervised = info.supervised_keys
    supervised = supervised if isinstance(supervised, tuple) and len(supervised) == 2 else (None, None)
    if supervised[0] in images:
        image_key = supervised[0]
    elif "image" in images:
        image_key = "image"
    elif len(images) == 1:
        image_key = images[0]
    else:
        which = f"several ({', '.join(images)})" if images else "none"
        raise ValueError(f"'tfds:{name}' is not an image dataset the zoo can read: of its features "
                         f"({', '.join(features.keys())}) {which} are images, and none is its supervised input.")
    label_key = next((key for key in (supervised[1], "label")
                      if key in features and isinstance(features[key], tfds.features.ClassLabel)), None)
    return image_key, label_key


def _check_image_feature(feature, name, image_size):
    height, width, channels = feature.shape
    if feature.np_dtype != np.uint8:
        raise ValueError(f"'tfds:{name}' has {np.dtype(feature.np_dtype).name} images; the zoo reads uint8 "
                         "(0-255) images.")
    if channels is None:
        raise ValueError(f"'tfds:{name}': its images have no fixed number of channels (feature shape "
                         f"{feature.shape}); the zoo needs one.")
    if image_size is None and (height is None or width is None):
        raise ValueError(
            f"The images of 'tfds:{name}' vary in size (feature shape {feature.shape}); pass "
            "image_size=(height, width) to crop them centrally to that aspect ratio and resize them "
            "to it (nothing is resized unless asked).")


def _tfds_split(splits, split, name):
    """tfds' split for the zoo's ``"train"`` or ``"test"``; ``splits``:
    those tfds knows (empty before a dataset is prepared)."""
    if not splits:
        return split
    if split == "test" and "test" not in splits and "validation" in splits:
        return "validation"  # e.g. ImageNet's labelled held-out images
    if split not in splits:
        raise ValueError(f"'tfds:{name}' has no '{split}' split (it has {', '.join(sorted(splits))}).")
    return split


def provide_hint(name):
    """How to make ``name`` readable through tfds (for error messages)."""
    return (f"have tensorflow-datasets prepare it in its data_dir (${TFDS_DATA_ENV}, else tfds' default): "
            "online, by loading it with download=True (the default; downloaded once); offline, by preparing it "
            f"on a machine with internet (`tfds build {name} --data_dir DIR`, or "
            f"caps_zoo.data.load('tfds:{name}') there with {TFDS_DATA_ENV}=DIR) and copying DIR here, with {TFDS_DATA_ENV}=DIR (datasets that tfds "
            "cannot download itself, such as imagenet2012, need their files in DIR/downloads/manual first)")


def read_split(name, split, image_size=None, download=True):
    """``(images uint8, labels int32)`` of tfds' dataset ``name``, whole, for
    the zoo's stored split ``"train"`` or ``"test"`` (see the module's
    docstring); ``image_size``: ``(height, width)`` or None (as stored)."""
    if split not in SPLITS:
        raise ValueError(f"read_split reads the stored splits {SPLITS}, not '{split}'.")
    image_size = resizing.check_image_size(image_size)
    tfds = import_tfds(f"'tfds:{name}'")
    check_name(tfds, name)
    builder = tfds.builder(name, data_dir=data_dir())
    image_key, label_key = _feature_keys(tfds, builder.info, name)
    image_feature = builder.info.features[image_key]
    _check_image_feature(image_feature, name, image_size)

    def unavailable(attempt, error):
        return TFDSUnavailableError(name, f"{attempt} in its data_dir '{builder.data_dir}' failed "
                                          f"({type(error).__name__}: {error})", provide_hint(name))

    if download:
        try:
            builder.download_and_prepare()
        except Exception as error:  # downloads fail in many ways (network, manual files, disk)
            raise unavailable("downloading and preparing it", error) from error
    tfds_split = _tfds_split(builder.info.splits, split, name)
    try:
        dataset = builder.as_dataset(split=tfds_split, shuffle_files=False)
    except Exception as error:  # not prepared (AssertionError), unreadable files
        attempt = f"reading its {tfds_split} split" + ("" if download else " (download=False: nothing downloaded)")
        raise unavailable(attempt, error) from error

    def element(example):
        image = example[image_key]
        if image_size is not None:
            image = resizing.resize(image, image_size)
        label = tf.cast(example[label_key], tf.int32) if label_key else tf.constant(-1, tf.int32)
        return image, label

    batches = dataset.map(element, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(_READ_BATCH)
    image_chunks, label_chunks = [], []
    for images, labels in batches.as_numpy_iterator():
        image_chunks.append(images)
        label_chunks.append(labels)
    if image_chunks:
        images, labels = np.concatenate(image_chunks), np.concatenate(label_chunks)
    else:
        height, width, channels = image_feature.shape if image_size is None else (*image_size,
                                                                                   image_feature.shape[-1])
        images, labels = np.zeros((0, height, width, channels), np.uint8), np.zeros((0,), np.int32)
    # Single-channel images in Keras' layout (n, h, w), as the npz files and
    # Keras' loader give them (multi_mnist and load_arrays' callers expect it).
    return (images[..., 0] if images.shape[-1] == 1 else images), labels
