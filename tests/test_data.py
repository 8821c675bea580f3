import hashlib
import re
import os
import sys
from pathlib import Path

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
    # tensorflow-datasets, the last source, as if not installed: its real
    # download would retry for minutes offline (tests/test_tfds_data.py
    # covers it with mocked data).
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)


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
    with pytest.raises(ValueError, match=r"Unknown dataset 'mnits'\. Did you mean 'mnist'\?"):
        data.load("mnits")
    with pytest.raises(ValueError, match="Unknown split 'valid'; choose one of train, validation, test"):
        data.load("mnist", "valid")
    with pytest.raises(ValueError, match="only the 'test' split"):
        data.load_arrays("mnist_sample", "validation")
    with pytest.raises(ValueError, match="applies to the 'train' split"):
        data.load_arrays("mnist", "test", holdout_validation=True)


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


def _hashes(images):
    return {hashlib.sha256(image.tobytes()).hexdigest() for image in images}


def _write_indexed_npz(folder, train_count, test_count=10):
    """Training images that encode their index (all distinct), so that
    overlaps between splits show up as shared images."""
    index = np.arange(train_count)
    x_train = np.zeros((train_count, 28, 28), np.uint8)
    x_train[:, 0, 0], x_train[:, 0, 1], x_train[:, 0, 2] = index % 256, index // 256 % 256, 1
    y_train = (index % 10).astype(np.uint8)
    x_test = np.full((test_count, 28, 28), 7, np.uint8)
    np.savez(folder / "mnist.npz", x_train=x_train, y_train=y_train, x_test=x_test,
             y_test=np.zeros(test_count, np.uint8))
    return x_train, y_train


def test_validation_split_is_the_last_5000_training_images(tmp_path, monkeypatch):
    x_train, y_train = _write_indexed_npz(tmp_path, 6000)
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path))
    assert data.VALIDATION_SIZE == 5000
    images, labels = data.load_arrays("mnist", "validation")
    np.testing.assert_array_equal(images, x_train[-5000:])
    np.testing.assert_array_equal(labels, y_train[-5000:])
    kept, kept_labels = data.load_arrays("mnist", "train", holdout_validation=True)
    np.testing.assert_array_equal(kept, x_train[:1000])
    np.testing.assert_array_equal(kept_labels, y_train[:1000])
    assert not _hashes(kept) & _hashes(images) and len(_hashes(kept) | _hashes(images)) == 6000
    # Without holdout_validation the training split stays whole (the shipped runs' data).
    np.testing.assert_array_equal(data.load_arrays("mnist", "train")[0], x_train)
    assert data.num_examples("mnist", "train") == 6000
    assert data.num_examples("mnist", "train", holdout_validation=True) == 1000
    assert data.num_examples("mnist", "train", limit=300, holdout_validation=True) == 300
    assert data.num_examples("mnist", "validation") == 5000
    assert data.load_images("mnist", "train", holdout_validation=True).shape == (1000, 28, 28, 1)
    # A smaller validation split: the last N, still disjoint.
    small, _ = data.load_arrays("mnist", "validation", validation_size=64)
    np.testing.assert_array_equal(small, x_train[-64:])
    assert len(data.load_arrays("mnist", "train", holdout_validation=True, validation_size=64)[0]) == 5936


def _real_mnist_folder():
    """$CAPS_ZOO_DATA, else the shared offline copy beside the project (CI's)."""
    candidates = [os.environ.get(data.DATA_ENV), Path(__file__).resolve().parents[2] / "shared" / "data"]
    for folder in candidates:
        if folder and (Path(folder) / "mnist.npz").is_file():
            return folder
    pytest.skip("no local mnist.npz (set CAPS_ZOO_DATA)")


def test_real_mnist_validation_is_disjoint_from_the_55000_training_images(monkeypatch):
    monkeypatch.setenv(data.DATA_ENV, str(_real_mnist_folder()))
    everything, _ = data.load_arrays("mnist", "train")
    assert len(everything) == 60_000
    validation, _ = data.load_arrays("mnist", "validation")
    training, _ = data.load_arrays("mnist", "train", holdout_validation=True)
    assert len(validation) == 5000 and len(training) == 55_000
    np.testing.assert_array_equal(validation, everything[55_000:])
    np.testing.assert_array_equal(training, everything[:55_000])
    assert not _hashes(training) & _hashes(validation)  # no image in both, even duplicated


def test_validation_split_behaves_like_test(tmp_path, monkeypatch):
    arrays = _write_fake_npz(tmp_path)  # 50 training images
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path))
    images, labels = next(iter(data.load("mnist", "validation", batch_size=100, validation_size=20, seed=0)))
    # Unshuffled and unshifted by default.
    np.testing.assert_allclose(images[..., 0], arrays["x_train"][-20:] / 255.0, atol=1e-7)
    np.testing.assert_array_equal(labels, arrays["y_train"][-20:])
    # The fixed binarization is one repeatable draw, on every call.
    def fixed():
        return next(iter(data.load("mnist", "validation", batch_size=100, validation_size=20,
                                   binarize="fixed")))[0].numpy()
    first, again = fixed(), fixed()
    np.testing.assert_array_equal(first, again)
    assert set(np.unique(first)) == {0.0, 1.0}
    np.testing.assert_array_equal(first, data.binarize_fixed(data.as_float_images(arrays["x_train"][-20:])))
    # The held-out training split is shuffled and shifted as "train" is.
    train_images, train_labels = next(iter(data.load("mnist", "train", batch_size=100, seed=0,
                                                     holdout_validation=True, validation_size=20)))
    assert sorted(train_labels.numpy().tolist()) == sorted(arrays["y_train"][:30].tolist())
    assert train_labels.numpy().tolist() != arrays["y_train"][:30].tolist()


def test_too_few_training_images_for_a_validation_split(tmp_path, monkeypatch):
    _write_fake_npz(tmp_path)  # 50 training images
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path))
    too_few = "'mnist' has 50 training images: too few for a validation split of 5,000"
    with pytest.raises(ValueError, match=too_few):
        data.load("mnist", "validation")
    with pytest.raises(ValueError, match="too few for a validation split of 50"):
        data.load_arrays("mnist", "train", holdout_validation=True, validation_size=50)
    with pytest.raises(ValueError, match="validation_size must be >= 1"):
        data.load_arrays("mnist", "validation", validation_size=0)
    assert data.num_examples("mnist", "validation", validation_size=49) == 49


@pytest.mark.parametrize("change, message", [
    ("corrupt", r"is not a readable npz"),
    ("missing x_test", r"has no x_test \(it has \['x_train', 'y_test', 'y_train'\]\)"),
    ("float images", r"x_test must be uint8 images .* got dtype float32.*divides by 255 itself"),
    ("labels 0-10", r"y_test must be class ids 0-9; got 0 to 10"),
    ("labels of another length", r"y_test must be integer labels \(20,\); got dtype uint8, shape \(19,\)"),
])
def test_bad_local_files_are_refused_with_their_path(change, message, tmp_path, monkeypatch):
    arrays = _write_fake_npz(tmp_path)
    path = tmp_path / "mnist.npz"
    if change == "corrupt":
        path.write_bytes(path.read_bytes()[:500])
    else:
        if change == "missing x_test":
            del arrays["x_test"]
        elif change == "float images":
            arrays["x_test"] = arrays["x_test"].astype("float32") / 255.0
        elif change == "labels 0-10":
            arrays["y_test"][0] = 10
        else:
            arrays["y_test"] = arrays["y_test"][:19]
        np.savez(path, **arrays)
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path))
    _keras_download_fails(monkeypatch)
    with pytest.raises(data.DataFileError, match=re.escape(str(path)) + ".*" + message):
        data.load_arrays("mnist", "test")
