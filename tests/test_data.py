import numpy as np
import pytest

from caps_zoo import data


def _write_fake_npz(folder, name="mnist"):
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (50, 28, 28), dtype=np.uint8),
        "y_train": rng.integers(0, 10, 50, dtype=np.uint8),
        "x_test": rng.integers(0, 256, (20, 28, 28), dtype=np.uint8),
        "y_test": rng.integers(0, 10, 20, dtype=np.uint8),
    }
    np.savez(folder / f"{name}.npz", **arrays)
    return arrays


def _keras_download_fails(monkeypatch):
    def offline():
        raise OSError("network is unreachable")

    monkeypatch.setitem(data._KERAS_LOADERS, "mnist", offline)


def test_local_npz_is_read_first(tmp_path, monkeypatch):
    arrays = _write_fake_npz(tmp_path)
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path))
    _keras_download_fails(monkeypatch)  # proves no download is attempted
    images, labels = data.load_arrays("mnist", "test")
    np.testing.assert_array_equal(images, arrays["x_test"])
    batch_images, batch_labels = next(iter(data.load("mnist", "test", batch_size=20)))
    assert batch_images.shape == (20, 28, 28, 1) and batch_images.dtype == "float32"
    np.testing.assert_allclose(batch_images[..., 0], arrays["x_test"] / 255.0, atol=1e-7)
    np.testing.assert_array_equal(batch_labels, arrays["y_test"])


def test_offline_without_local_copy_explains_both_fixes(tmp_path, monkeypatch):
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path))  # an empty folder
    _keras_download_fails(monkeypatch)
    with pytest.raises(data.DataUnavailableError) as error:
        data.load_arrays("mnist", "train")
    message = str(error.value)
    assert "CAPS_ZOO_DATA" in message and "mnist.npz" in message
    assert "internet" in message and "network is unreachable" in message


def test_falls_back_to_keras_loader(tmp_path, monkeypatch):
    monkeypatch.delenv(data.DATA_ENV, raising=False)
    fake = (np.zeros((3, 28, 28), np.uint8), np.arange(3)), (np.ones((2, 28, 28), np.uint8), np.arange(2))
    monkeypatch.setitem(data._KERAS_LOADERS, "mnist", lambda: fake)
    images, labels = data.load_arrays("mnist", "test")
    assert images.shape == (2, 28, 28) and list(labels) == [0, 1]


def test_shipped_sample_is_real_mnist_test_data():
    images, labels = data.load_arrays("mnist_sample", "test")
    assert images.shape == (1000, 28, 28) and images.dtype == np.uint8
    assert list(labels[:10]) == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]  # MNIST's first test labels
    with pytest.raises(ValueError, match="only the 'test' split"):
        data.load_arrays("mnist_sample", "train")


def test_unknown_dataset_and_split():
    with pytest.raises(ValueError, match="Unknown dataset 'cifar10'"):
        data.load("cifar10")
    with pytest.raises(ValueError, match="Unknown split 'validation'"):
        data.load("mnist", "validation")


def test_training_shifts_are_translations_of_up_to_two_pixels():
    originals, _ = data.load_arrays("mnist_sample", "test")
    originals = originals[:64].astype("float32") / 255.0
    shifted, _ = next(
        iter(data.load("mnist_sample", "test", batch_size=64, shuffle=False, shift_pixels=2, seed=1))
    )
    shifted = shifted.numpy()[..., 0]
    moved = 0
    for original, image in zip(originals, shifted):
        padded = np.pad(original, 2)
        matches = [
            (dy, dx)
            for dy in range(5)
            for dx in range(5)
            if np.array_equal(padded[dy : dy + 28, dx : dx + 28], image)
        ]
        assert matches, "a training image is not a <= 2 pixel translation of its original"
        moved += (2, 2) not in matches
    assert moved > 32  # most images really moved


def test_seed_makes_shuffle_and_shifts_repeatable_but_epochs_differ():
    def epochs(seed):
        ds = data.load("mnist_sample", "test", batch_size=50, shuffle=True, shift_pixels=2, seed=seed, limit=50)
        return [next(iter(ds))[0].numpy() for _ in range(2)]

    first, again, other = epochs(7), epochs(7), epochs(8)
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[0], first[1])  # each epoch draws anew
    assert not np.array_equal(first[0], other[0])


def test_train_split_defaults_shuffle_and_shift(tmp_path, monkeypatch):
    arrays = _write_fake_npz(tmp_path)
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path))
    images, labels = next(iter(data.load("mnist", "train", batch_size=50, seed=0)))
    assert sorted(labels.numpy().tolist()) == sorted(arrays["y_train"].tolist())
    assert labels.numpy().tolist() != arrays["y_train"].tolist()  # shuffled
    assert images.shape == (50, 28, 28, 1)
    unshuffled, _ = next(iter(data.load("mnist", "train", batch_size=50, shuffle=False, seed=0)))
    moved = [not np.allclose(a, b / 255.0) for a, b in zip(unshuffled[..., 0], arrays["x_train"])]
    assert sum(moved) > 25  # shifted by default
    test_images, _ = next(iter(data.load("mnist", "test", batch_size=20)))
    np.testing.assert_allclose(test_images[..., 0], arrays["x_test"] / 255.0, atol=1e-7)  # no shift


def test_train_split_shuffles_and_limit():
    ds = data.load("mnist_sample", "test", batch_size=100, shuffle=True, seed=3, limit=100)
    _, labels = next(iter(ds))
    assert sorted(labels.numpy().tolist()) == sorted(data.load_arrays("mnist_sample", "test")[1][:100].tolist())
    assert labels.numpy().tolist() != data.load_arrays("mnist_sample", "test")[1][:100].tolist()
