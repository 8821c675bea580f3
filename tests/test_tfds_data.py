"""caps_zoo.data through tensorflow-datasets, offline.

``tfds.testing.mock_data`` stands in for tfds' data: its
``download_and_prepare`` does nothing and its examples are made up (or made
by the ``as_dataset_fn`` given), so no test reaches the network. The tests
that need tfds skip when it is not installed (``pip install
"caps_zoo[tfds]"``); the one that simulates its absence runs either way.
"""

import sys

import numpy as np
import pytest
import tensorflow as tf

from caps_zoo import data
from caps_zoo.data import resizing, tfds_source


@pytest.fixture
def tfds():
    return pytest.importorskip("tensorflow_datasets")


@pytest.fixture
def no_local_data(tmp_path, monkeypatch):
    """An empty CAPS_ZOO_DATA folder and an offline Keras loader: only tfds is left."""
    folder = tmp_path / "npz"
    folder.mkdir()
    monkeypatch.setenv(data.DATA_ENV, str(folder))

    def offline():
        raise OSError("network is unreachable")

    for name in data._KERAS_LOADERS:
        monkeypatch.setitem(data._KERAS_LOADERS, name, offline)
    return folder


TRAIN, TEST = 60, 20  # examples of the indexed mock splits


def _indexed_split(split, shape=(32, 32, 3), classes=10):
    """Images that encode their split and index (all distinct) and labels
    ``index % classes``, as tfds' decoded examples."""
    count = TRAIN if split == "train" else TEST
    index = np.arange(count)
    images = np.zeros((count, *shape), np.uint8)
    images[:, 0, 0, 0], images[:, 0, 1, 0] = index, 1 if split == "train" else 2
    images[:, 1:, :, :] = 200  # rows other than the first: bright, to check the [0, 1] scaling
    return images, (index % classes).astype(np.int64)


@pytest.fixture
def indexed_tfds(tfds):
    """mock_data whose splits are ``_indexed_split``'s; yields the splits read."""
    reads = []

    def as_dataset(builder, split, decoders=None, read_config=None, **kwargs):
        reads.append((builder.name, str(split)))
        shape = builder.info.features["image"].shape
        images, labels = _indexed_split(str(split), shape, builder.info.features["label"].num_classes)
        return tf.data.Dataset.from_tensor_slices({"image": images, "label": labels})

    with tfds.testing.mock_data(as_dataset_fn=as_dataset):
        yield reads


def _hashes(images):
    return {image.tobytes() for image in images}


def test_cifar10_loads_with_its_shapes_dtypes_and_ranges(indexed_tfds, no_local_data):
    images, labels = data.load_arrays("cifar10", "train")
    expected_images, expected_labels = _indexed_split("train")
    assert images.shape == (TRAIN, 32, 32, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(images, expected_images)
    assert labels.dtype == np.int32 and labels.tolist() == expected_labels.tolist()
    floats = data.load_images("cifar10", "test")
    assert floats.shape == (TEST, 32, 32, 3) and floats.dtype == np.float32
    assert floats.min() >= 0.0 and floats.max() <= 1.0 and floats.max() == pytest.approx(200 / 255)
    # Batched as the npz datasets are: the last batch smaller unless dropped.
    batches = list(data.load("cifar10", "test", batch_size=8))
    assert [tuple(images.shape) for images, _ in batches] == [(8, 32, 32, 3), (8, 32, 32, 3), (4, 32, 32, 3)]
    assert all(images.dtype == tf.float32 and labels.dtype == tf.int32 for images, labels in batches)
    np.testing.assert_allclose(np.concatenate([images for images, _ in batches]), floats)
    dropped = list(data.load("cifar10", "test", batch_size=8, drop_remainder=True))
    assert len(dropped) == 2
    train_images, train_labels = next(iter(data.load("cifar10", "train", batch_size=TRAIN, seed=0)))
    assert train_images.shape == (TRAIN, 32, 32, 3)  # shifted by 2 px and shuffled, colour kept
    assert sorted(train_labels.numpy().tolist()) == sorted(expected_labels.tolist())
    assert train_labels.numpy().tolist() != expected_labels.tolist()
    assert data.num_examples("cifar10", "train") == TRAIN and data.num_examples("cifar10", "test", limit=5) == 5


def test_validation_split_is_the_last_training_images_for_tfds(indexed_tfds, no_local_data):
    everything, all_labels = data.load_arrays("cifar10", "train")
    validation, labels = data.load_arrays("cifar10", "validation", validation_size=20)
    training, _ = data.load_arrays("cifar10", "train", holdout_validation=True, validation_size=20)
    np.testing.assert_array_equal(validation, everything[-20:])
    np.testing.assert_array_equal(labels, all_labels[-20:])
    np.testing.assert_array_equal(training, everything[:-20])
    assert not _hashes(training) & _hashes(validation) and len(_hashes(training) | _hashes(validation)) == TRAIN
    assert data.num_examples("cifar10", "validation", validation_size=20) == 20
    assert data.num_examples("cifar10", "train", holdout_validation=True, validation_size=20) == TRAIN - 20
    # The same sizes rule as for the npz datasets: 5,000 by default.
    too_few = "'cifar10' has 60 training images: too few for a validation split of 5,000"
    with pytest.raises(ValueError, match=too_few):
        data.load("cifar10", "validation")
    with pytest.raises(ValueError, match="'tfds:cifar100' has 60 training images: too few"):
        data.load_arrays("tfds:cifar100", "validation")
    # The validation split behaves like test: unshuffled, unshifted.
    batch, _ = next(iter(data.load("cifar10", "validation", batch_size=100, validation_size=20, seed=0)))
    np.testing.assert_allclose(batch, everything[-20:] / 255.0, atol=1e-7)


def test_fixed_splits_are_the_same_on_every_read(tfds, no_local_data):
    # mock_data's own random examples: repeatable, as tfds' prepared order is.
    with tfds.testing.mock_data(num_examples=30):
        def read(split):
            return [(images.numpy(), labels.numpy())
                    for images, labels in data.load("cifar10", split, batch_size=7, validation_size=10)]

        for split in ("test", "validation"):
            first, again = read(split), read(split)
            assert len(first) == len(again) > 1
            for (images, labels), (images_again, labels_again) in zip(first, again):
                np.testing.assert_array_equal(images, images_again)
                np.testing.assert_array_equal(labels, labels_again)

        def training_epoch(seed):
            return next(iter(data.load("cifar10", "train", batch_size=30, seed=seed)))[0].numpy()

        np.testing.assert_array_equal(training_epoch(3), training_epoch(3))
        assert not np.array_equal(training_epoch(3), training_epoch(4))


def test_local_npz_comes_first_then_keras_then_tfds(indexed_tfds, no_local_data, monkeypatch):
    rng = np.random.default_rng(0)
    colour = {"x_train": rng.integers(0, 256, (30, 32, 32, 3), dtype=np.uint8),
              "y_train": rng.integers(0, 10, (30, 1), dtype=np.uint8),  # Keras' CIFAR labels are (n, 1)
              "x_test": rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8),
              "y_test": rng.integers(0, 10, (10, 1), dtype=np.uint8)}
    np.savez(no_local_data / "cifar10.npz", **colour)
    images, labels = data.load_arrays("cifar10", "test")
    np.testing.assert_array_equal(images, colour["x_test"])
    np.testing.assert_array_equal(labels, colour["y_test"][:, 0])
    assert data.num_examples("cifar10", "train") == 30
    assert indexed_tfds == []  # tfds was not read

    grey = {"x_train": np.full((30, 28, 28), 5, np.uint8), "y_train": np.zeros(30, np.uint8),
            "x_test": np.full((10, 28, 28), 6, np.uint8), "y_test": np.zeros(10, np.uint8)}
    np.savez(no_local_data / "mnist.npz", **grey)
    np.testing.assert_array_equal(data.load_arrays("mnist", "test")[0], grey["x_test"])
    assert indexed_tfds == []

    # Without the npz, Keras' loader (its cache or a download) before tfds ...
    (no_local_data / "mnist.npz").unlink()
    keras_arrays = (grey["x_train"], grey["y_train"]), (grey["x_test"] + 1, grey["y_test"])
    monkeypatch.setitem(data._KERAS_LOADERS, "mnist", lambda: keras_arrays)
    np.testing.assert_array_equal(data.load_arrays("mnist", "test")[0], grey["x_test"] + 1)
    assert indexed_tfds == []
    # ... and without either, tfds, in Keras' layout for single-channel images.
    monkeypatch.setitem(data._KERAS_LOADERS, "mnist", lambda: (_ for _ in ()).throw(OSError("offline")))
    images, labels = data.load_arrays("mnist", "test")
    assert indexed_tfds == [("mnist", "test")]
    assert images.shape == (TEST, 28, 28) and images.dtype == np.uint8
    np.testing.assert_array_equal(images, _indexed_split("test", (28, 28, 1))[0][..., 0])
    batch, _ = next(iter(data.load("mnist", "test", batch_size=4)))
    assert batch.shape == (4, 28, 28, 1)
    data.load_arrays("fashion_mnist", "train")
    assert indexed_tfds[-1] == ("fashion_mnist", "train")


def test_without_tensorflow_datasets_the_error_says_how_to_install_it(no_local_data, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # `import tensorflow_datasets` fails
    with pytest.raises(data.TFDSNotInstalledError) as error:
        data.load_arrays("tfds:cifar100", "test")
    assert 'pip install "caps_zoo[tfds]"' in str(error.value) and "'tfds:cifar100'" in str(error.value)
    assert isinstance(error.value, ImportError) and isinstance(error.value, data.DataUnavailableError)
    # A named dataset: both ways to provide it, and the installation.
    with pytest.raises(data.TFDSNotInstalledError) as error:
        data.load("cifar10", "train")
    message = str(error.value)
    assert "CAPS_ZOO_DATA" in message and "cifar10.npz" in message and "(n, 32, 32, 3)" in message
    assert "tensorflow-datasets: not installed" in message and 'pip install "caps_zoo[tfds]"' in message
    with pytest.raises(data.DataUnavailableError) as error:
        data.num_examples("mnist", "test")
    message = str(error.value)
    assert "mnist.npz" in message and "network is unreachable" in message and "internet" in message
    assert "caps_zoo[tfds]" in message
    # The npz path needs no tfds.
    np.savez(no_local_data / "mnist.npz", x_train=np.zeros((3, 28, 28), np.uint8), y_train=np.zeros(3, np.uint8),
             x_test=np.zeros((2, 28, 28), np.uint8), y_test=np.zeros(2, np.uint8))
    assert data.num_examples("mnist", "test") == 2


def test_generic_tfds_name_reads_any_image_dataset(tfds, no_local_data):
    with tfds.testing.mock_data(num_examples=6):
        images, labels = data.load_arrays("tfds:cifar100", "test")
        assert images.shape == (6, 32, 32, 3) and labels.min() >= 0 and labels.max() < 100
        images, _ = data.load_arrays("tfds:mnist", "train")
        assert images.shape == (6, 28, 28)
        # Images of varying size are refused unless image_size is given ...
        with pytest.raises(ValueError, match=r"images of 'tfds:imagenet2012' vary in size .* pass image_size"):
            data.load_arrays("tfds:imagenet2012", "train")
        batch, labels = next(iter(data.load("tfds:imagenet2012", "train", batch_size=6, image_size=(24, 24))))
        assert batch.shape == (6, 24, 24, 3) and labels.dtype == tf.int32
        # ... and counting them needs it too (num_examples reads the split as load does).
        assert data.num_examples("tfds:imagenet2012", "test", image_size=(24, 24)) == 6
        # A dataset without class labels gives -1; image_size crops its 218x178 faces centrally.
        images, labels = data.load_arrays("tfds:celeb_a", "test", image_size=(16, 16))
        assert images.shape == (6, 16, 16, 3) and set(labels.tolist()) == {-1}
        assert data.load_images("tfds:celeb_a", "test").shape == (6, 218, 178, 3)  # not resized unless asked


def test_tfds_test_split_is_its_validation_split_where_it_has_no_test():
    assert tfds_source._tfds_split({"train": 1, "validation": 1}, "test", "imagenet_resized") == "validation"
    assert tfds_source._tfds_split({"train": 1, "test": 1, "validation": 1}, "test", "x") == "test"
    assert tfds_source._tfds_split({}, "test", "x") == "test"  # splits unknown until prepared
    with pytest.raises(ValueError, match=r"'tfds:x' has no 'train' split \(it has test\)"):
        tfds_source._tfds_split({"test": 1}, "train", "x")


def test_bad_names_name_the_close_matches(tfds):
    with pytest.raises(ValueError, match=r"Unknown tensorflow-datasets dataset 'cifar1O' \(in 'tfds:cifar1O'\)\. "
                                         r"Did you mean 'tfds:cifar10'"):
        data.load_arrays("tfds:cifar1O", "test")
    with pytest.raises(ValueError, match=r"Unknown dataset 'cifar'\. Did you mean 'cifar10'\?"):
        data.load("cifar", "test")
    with pytest.raises(ValueError, match=r"Unknown dataset 'svhn_cropped'\. Did you mean 'tfds:svhn_cropped'\?"):
        data.num_examples("svhn_cropped", "test")
    with pytest.raises(ValueError, match=r"'tfds:' needs a tensorflow-datasets name"):
        data.load("tfds:", "test")
    with pytest.raises(ValueError, match="Unknown split 'valid'"):
        data.load("tfds:cifar10", "valid")


def test_offline_the_error_says_what_was_tried_and_how_to_provide_the_data(tfds, no_local_data, tmp_path,
                                                                           monkeypatch):
    tfds_dir = tmp_path / "tensorflow_datasets"
    monkeypatch.setenv(tfds_source.TFDS_DATA_ENV, str(tfds_dir))

    def offline(builder, *args, **kwargs):
        raise ConnectionError("Failed to resolve host (Name or service not known)")

    # tfds' real reads, its download replaced by the failure it meets offline (after its retries).
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", offline)
    with pytest.raises(tfds_source.TFDSUnavailableError) as error:
        data.load_arrays("tfds:cifar10", "test")
    message = str(error.value)
    assert f"'{tfds_dir}/cifar10/" in message and "downloading and preparing it" in message
    assert "ConnectionError: Failed to resolve host" in message
    assert "tfds build cifar10 --data_dir DIR" in message and "CAPS_ZOO_TFDS_DATA_DIR=DIR" in message
    # download=False reads what is prepared, and fails at once without it.
    with pytest.raises(data.DataUnavailableError) as error:
        data.load_arrays("cifar10", "train", download=False)
    message = str(error.value)
    assert "(1) a local copy at" in message and "cifar10.npz' (not found)" in message
    assert "(2) tensorflow-datasets: reading its train split (download=False: nothing downloaded)" in message
    assert "could not find data" in message  # tfds' own words
    assert f"set CAPS_ZOO_DATA to a folder holding cifar10.npz" in message and "tfds build cifar10" in message


def test_image_size_crops_to_the_aspect_ratio_then_resizes_only_when_asked(monkeypatch):
    wide = np.arange(4 * 8, dtype=np.uint8).reshape(1, 4, 8, 1)
    # A 4x8 image to 4x4: its central 4x4, untouched (no resampling at the same scale).
    np.testing.assert_array_equal(resizing.resize(tf.constant(wide), (4, 4)).numpy(), wide[:, :, 2:6])
    sample, _ = data.load_arrays("mnist_sample", "test")
    np.testing.assert_array_equal(data.load_arrays("mnist_sample", "test", image_size=(28, 28))[0], sample)
    larger = data.load_arrays("mnist_sample", "test", image_size=(32, 32))[0]
    assert larger.shape == (1000, 32, 32) and larger.dtype == np.uint8
    batch, _ = next(iter(data.load("mnist_sample", "test", batch_size=4, image_size=(32, 32))))
    assert batch.shape == (4, 32, 32, 1)
    for bad in ((32,), (0, 32), (32.5, 32), "32x32"):
        with pytest.raises(ValueError, match="image_size must be None or \\(height, width\\)"):
            data.load_arrays("mnist_sample", "test", image_size=bad)
    with pytest.raises(ValueError, match="'image_size' do not apply to 'multi_mnist'"):
        data.load("multi_mnist", "test", image_size=(32, 32))
    with pytest.raises(ValueError, match="'download' do not apply to 'multi_mnist'"):
        data.num_examples("multi_mnist", "test", download=False)


def test_channels_convert_grey_to_colour_and_colour_to_grey(indexed_tfds, no_local_data):
    """MNIST for a colour model (the channel repeated), CIFAR-10 for a grey one
    (the luma, tf.image.rgb_to_grayscale's weights); None keeps them."""
    grey = data.load_images("mnist_sample", "test")[:4]
    colour = data.load_images("mnist_sample", "test", channels=3)[:4]
    assert colour.shape == (4, 28, 28, 3)
    np.testing.assert_array_equal(colour, np.repeat(grey, 3, axis=-1))
    batch, _ = next(iter(data.load("mnist_sample", "test", batch_size=4, channels=3)))
    np.testing.assert_array_equal(batch.numpy(), colour)

    cifar = data.load_images("cifar10", "test")[:4]
    as_grey = data.load_images("cifar10", "test", channels=1)[:4]
    assert as_grey.shape == (4, 32, 32, 1)
    np.testing.assert_allclose(as_grey, tf.image.rgb_to_grayscale(cifar).numpy(), atol=1e-6)
    assert data.load_images("cifar10", "test", channels=3).shape[-1] == 3  # as stored
    with pytest.raises(ValueError, match="channels must be None, 1 \\(grey\\) or 3"):
        data.load("mnist_sample", "test", channels=2)
