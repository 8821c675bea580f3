"""MultiMNIST pairs (caps_zoo.data.multi_mnist), checked against NumPy
references on real MNIST: every source digit of a pair is located in its
36x36 canvas and identified among the MNIST images by its exact pixels."""

import hashlib

import keras
import numpy as np
import pytest

from caps_zoo import data
from caps_zoo.data import multi_mnist

TRAIN_COUNT = 60000


@pytest.fixture(scope="module")
def mnist_train():
    """Real MNIST training images and labels, and a lookup from an image's
    bytes to the indices holding exactly it."""
    try:
        images, labels = data.load_arrays("mnist", "train")
    except data.DataUnavailableError as error:
        pytest.skip(str(error))
    lookup = {}
    for index, image in enumerate(images):
        lookup.setdefault(image.tobytes(), []).append(index)
    return images, labels, lookup


@pytest.fixture(scope="module")
def mnist_test():
    images, labels = data.load_arrays("mnist", "test")
    lookup = {}
    for index, image in enumerate(images):
        lookup.setdefault(image.tobytes(), []).append(index)
    return images, labels, lookup


def padded_reference(image, dy, dx):
    """NumPy reference: a 28x28 uint8 digit on the 36x36 canvas, shifted
    (zero fill, cropped at the edge), as float in [0, 1]."""
    big = np.zeros((36 + 32, 36 + 32), np.float32)  # room for any shift, cropped below
    top, left = 16 + 4 + dy, 16 + 4 + dx
    big[top:top + 28, left:left + 28] = image / 255.0
    return big[16:16 + 36, 16:16 + 36]


def locate(canvas, lookup, max_shift):
    """``(indices, dy, dx)`` of a canvas digit (36, 36) with max_shift <= 4:
    the shift whose 28x28 window holds all the ink and equals an MNIST image
    exactly."""
    as_uint8 = np.rint(canvas * 255).astype(np.uint8)
    assert np.allclose(as_uint8 / 255.0, canvas, atol=1e-6), "pixels are not MNIST's /255 values"
    total = int(as_uint8.astype(np.int64).sum())
    found = []
    for dy in range(-max_shift, max_shift + 1):
        for dx in range(-max_shift, max_shift + 1):
            window = as_uint8[4 + dy:32 + dy, 4 + dx:32 + dx]
            if int(window.astype(np.int64).sum()) == total and window.tobytes() in lookup:
                found.append((lookup[window.tobytes()], dy, dx))
    assert len(found) == 1, f"digit located {len(found)} times"
    return found[0]


def collect(dataset):
    merged, ids, two_hot, digits = [], [], [], []
    for x, targets in dataset:
        merged.append(x.numpy())
        ids.append(targets["label_ids"].numpy())
        two_hot.append(targets["labels_2hot"].numpy())
        digits.append(targets["digits"].numpy())
    return tuple(np.concatenate(parts) for parts in (merged, ids, two_hot, digits))


def check_pairs(pairs, images, labels, lookup, max_shift, allowed):
    """Every pair: sources are real MNIST images within ``allowed`` indices,
    shifted within bounds, labelled with their real labels, merged by
    min(a + b, 1), different labels; returns the source indices (pairs, 2)
    and their shifts (pairs, 2, 2)."""
    merged, ids, two_hot, digits = pairs
    assert merged.dtype == np.float32 and merged.shape[1:] == (36, 36, 1)
    assert ids.dtype == np.int32 and two_hot.dtype == np.float32 and digits.dtype == np.float32
    assert merged.min() >= 0 and merged.max() <= 1
    sources, shifts = [], []
    for n in range(len(merged)):
        assert ids[n, 0] != ids[n, 1]
        assert np.array_equal(two_hot[n], np.eye(10)[ids[n, 0]] + np.eye(10)[ids[n, 1]])
        np.testing.assert_allclose(merged[n], np.minimum(digits[n, 0] + digits[n, 1], 1.0), atol=1e-6)
        pair = []
        for k in range(2):
            indices, dy, dx = locate(digits[n, k, :, :, 0], lookup, max_shift)
            assert abs(dy) <= max_shift and abs(dx) <= max_shift
            index = next((i for i in indices if i in allowed), None)
            assert index is not None, f"source image {indices} outside the split"
            assert labels[index] == ids[n, k]
            np.testing.assert_allclose(digits[n, k, :, :, 0], padded_reference(images[index], dy, dx), atol=1e-6)
            pair.append(index)
            shifts.append((dy, dx))
        sources.append(pair)
    return np.array(sources), np.array(shifts).reshape(-1, 2, 2)


def test_place_shifts_and_crops_like_numpy():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 28, 28)).astype(np.uint8)
    shifts = np.array([[0, 0], [4, -4], [-3, 2], [8, -8], [-6, 5]])
    placed = multi_mnist.place(images.astype(np.float32) / 255.0, shifts).numpy()
    for image, (dy, dx), got in zip(images, shifts, placed):
        np.testing.assert_allclose(got, padded_reference(image, dy, dx), atol=1e-6)


def test_merge_is_clipped_sum_not_max():
    images = np.zeros((2, 28, 28), np.uint8)
    images[0, 4:20, 4:20] = 153  # 0.6
    images[1, 10:26, 10:26] = 179  # ~0.70
    labels = np.array([3, 7])
    merged, targets = multi_mnist.compose(images, labels, np.array([0, 1]), np.array([1, 0]),
                                          np.array([[0, 0, 2, -1], [1, 1, 0, 0]]))
    merged = merged.numpy()[..., 0]
    a = padded_reference(images[0], 0, 0)
    b = padded_reference(images[1], 2, -1)
    np.testing.assert_allclose(merged[0], np.minimum(a + b, 1.0), atol=1e-6)
    overlap = (a > 0) & (b > 0)
    assert overlap.any() and np.all(merged[0][overlap] == 1.0)  # a max would give 0.70
    np.testing.assert_allclose(merged[0][(a > 0) & ~overlap], 0.6, atol=1e-6)
    # Below 1 the sum shows unclipped: 0.3 + 0.4 = 0.7, not max 0.4.
    faint = (images // 2).astype(np.uint8)  # 76, 89
    merged, _ = multi_mnist.compose(faint, labels, np.array([0]), np.array([1]), np.array([[0, 0, 0, 0]]))
    inside = merged.numpy()[0, 14:24, 14:24, 0]
    np.testing.assert_allclose(inside, (76 + 89) / 255.0, atol=1e-6)
    assert np.array_equal(targets["label_ids"].numpy(), [[3, 7], [7, 3]])
    assert np.array_equal(targets["labels_2hot"].numpy()[0], np.eye(10)[3] + np.eye(10)[7])


def test_test_pairs_fixed_sources_shifts_labels(mnist_test):
    images, labels, lookup = mnist_test
    kwargs = dict(batch_size=32, limit=40, partners=3, max_shift=4)
    keras.utils.set_random_seed(1)
    first = collect(data.load("multi_mnist", "test", **kwargs))
    keras.utils.set_random_seed(2)
    second = collect(data.load("multi_mnist", "test", seed=123, **kwargs))
    for a, b in zip(first, second):
        assert np.array_equal(a, b)
    assert len(first[0]) == 40 * 3 == data.num_examples("multi_mnist", "test", limit=40, partners=3)
    sources, _ = check_pairs(first, images, labels, lookup, 4, range(40))
    # K pairs per image, in image order.
    assert np.array_equal(sources[:, 0], np.repeat(np.arange(40), 3))


def test_fixed_pairs_are_a_fixed_numpy_draw():
    labels = np.array([0, 1, 1, 2, 2, 2, 3, 0])
    one = multi_mnist.fixed_pairs(labels, "test", 4, 10)
    two = multi_mnist.fixed_pairs(labels, "test", 4, 10)
    assert np.array_equal(one, two) and one.shape == (80, 6)
    assert not np.array_equal(one, multi_mnist.fixed_pairs(labels, "validation", 4, 10))
    assert np.all(labels[one[:, 0]] != labels[one[:, 1]])
    assert np.abs(one[:, 2:]).max() == 4
    # Partners cover every image of another class.
    assert set(one[labels[one[:, 0]] == 2, 1]) == {0, 1, 2, 6, 7}


def pairs_digest(pairs):
    return hashlib.sha256(np.asarray(pairs).astype("<i8").tobytes()).hexdigest()


# Every reported MultiMNIST figure (validation selection, the 100,000 test
# pairs, the shipped sample) is a figure on these draws. NumPy promises no
# stream stability for Generator across versions: if a NumPy changes them,
# these fail instead of the figures silently moving to other pairs.
PINNED_PAIRS = {
    # split, images (labels from), partners: (sha256 of the int64 rows, first two rows)
    ("test", "mnist_sample[:500]", 1): (
        "d7fd33aa960a60f78dc63e66167fa6ad8ea4661a1a324d8adbc4a2da8069af58",
        [[0, 456, -1, 2, 0, 3], [1, 210, -4, 3, 0, 3]]),
    ("test", "mnist test", 10): (
        "f05fa4ea2b470a7975955bb6c05fe068d8f42d22ee590fd6512942182e143128",
        [[0, 464, -3, -1, -1, -4], [0, 5330, 0, -3, -1, 1]]),
    ("validation", "mnist validation", 1): (
        "50eeb153bceab050d52d4cc7aabd407a9b0d1b1307f4fb2e16768ce50e71c888",
        [[0, 1459, 0, 1, 4, -2], [1, 3300, -2, -2, -3, -4]]),
}


def test_fixed_pairs_are_pinned_across_machines_and_versions(mnist_test):
    labels = {"mnist_sample[:500]": data.load_arrays("mnist_sample", "test")[1][:500],
              "mnist test": mnist_test[1],
              "mnist validation": data.load_arrays("mnist", "validation")[1]}
    for (split, images, partners), (digest, first_rows) in PINNED_PAIRS.items():
        pairs = multi_mnist.fixed_pairs(labels[images], split, multi_mnist.DEFAULT_MAX_SHIFT, partners)
        assert pairs[:2].tolist() == first_rows, (split, images)
        assert pairs_digest(pairs) == digest, (split, images)


def test_test_pairs_of_the_first_1000_images_come_from_the_package(mnist_test, monkeypatch):
    sample_images, sample_labels = data.load_arrays("mnist_sample", "test")
    assert np.array_equal(sample_images, mnist_test[0][:1000])  # the same images, so the same pairs
    assert np.array_equal(sample_labels, mnist_test[1][:1000])
    read = []
    original = data.load_arrays
    monkeypatch.setattr(data, "load_arrays", lambda name, *args: read.append(name) or original(name, *args))
    next(iter(data.load("multi_mnist", "test", batch_size=8, limit=1000)))
    next(iter(data.load("multi_mnist", "test", batch_size=8, limit=1001)))
    next(iter(data.load("multi_mnist", "validation", batch_size=8, limit=500)))
    assert read == ["mnist_sample", "mnist", "mnist"]


def test_train_pairs_new_each_epoch_repeatable_by_seed(mnist_train):
    images, labels, lookup = mnist_train
    kwargs = dict(batch_size=16, limit=48, seed=7)
    dataset = data.load("multi_mnist", "train", **kwargs)
    epoch1, epoch2 = collect(dataset), collect(dataset)
    same_seed = collect(data.load("multi_mnist", "train", **kwargs))
    other_seed = collect(data.load("multi_mnist", "train", **{**kwargs, "seed": 8}))
    assert not np.array_equal(epoch1[0], epoch2[0])
    assert not np.array_equal(epoch1[0], other_seed[0])
    for a, b in zip(epoch1, same_seed):
        assert np.array_equal(a, b)
    assert len(epoch1[0]) == 48 == data.num_examples("multi_mnist", "train", limit=48)
    sources, shifts1 = check_pairs(epoch1, images, labels, lookup, 4, range(48))
    assert sorted(sources[:, 0]) == list(range(48))  # one pair per base image per epoch
    assert not np.array_equal(sources[:, 0], np.arange(48))  # in a shuffled order
    # Each base image gets a new partner and new shifts in the next epoch, not
    # just a new place in the order.
    sources2, shifts2 = check_pairs(epoch2, images, labels, lookup, 4, range(48))
    first, second = np.argsort(sources[:, 0]), np.argsort(sources2[:, 0])
    new_partner = sources[first, 1] != sources2[second, 1]
    new_shifts = np.any(shifts1[first] != shifts2[second], axis=(1, 2))
    assert new_partner.mean() > 0.8 and new_shifts.mean() > 0.9
    # The whole range of shifts occurs, both ends included.
    assert set(np.concatenate([shifts1, shifts2]).ravel()) == set(range(-4, 5))


def test_train_shifts_reach_bounds_and_zero_max_shift(mnist_train):
    images, labels, lookup = mnist_train
    merged, ids, two_hot, digits = collect(data.load("multi_mnist", "train", batch_size=64, limit=64, seed=0,
                                                     max_shift=0))
    for n in range(len(merged)):
        for k in range(2):
            indices, dy, dx = locate(digits[n, k, :, :, 0], lookup, 0)
            assert (dy, dx) == (0, 0)
    # Above 4 the frame is cropped at the canvas edge, never wrapped: each
    # digit equals the NumPy reference of one of its shifts within 6.
    merged, ids, two_hot, digits = collect(data.load("multi_mnist", "train", batch_size=32, limit=32, seed=1,
                                                     max_shift=6))
    assert np.all(ids[:, 0] != ids[:, 1])
    seen = set()
    for canvas in digits[:, 0, :, :, 0]:
        matches = [(dy, dx) for dy in range(-6, 7) for dx in range(-6, 7)
                   for index in range(32)
                   if np.allclose(canvas, padded_reference(images[index], dy, dx), atol=1e-6)]
        assert matches, "a digit is not a shifted, cropped MNIST image"
        seen.update(abs(v) for match in matches for v in match)
    assert max(seen) > 4


def test_validation_and_holdout_train_are_disjoint(mnist_train):
    images, labels, lookup = mnist_train
    validation = collect(data.load("multi_mnist", "validation", batch_size=100, validation_size=150))
    assert len(validation[0]) == 150 == data.num_examples("multi_mnist", "validation", validation_size=150)
    check_pairs(validation, images, labels, lookup, 4, range(TRAIN_COUNT - 150, TRAIN_COUNT))
    # Holding out all but the first 150 images: train pairs (bases and
    # partners) come only from those.
    train = collect(data.load("multi_mnist", "train", batch_size=100, seed=0, holdout_validation=True,
                              validation_size=TRAIN_COUNT - 150))
    assert len(train[0]) == 150
    check_pairs(train, images, labels, lookup, 4, range(150))


@pytest.mark.parametrize("kwargs, message", [
    (dict(max_shift=-1), "max_shift must be an integer from 0 to 8"),
    (dict(max_shift=9), "max_shift must be an integer from 0 to 8"),
    (dict(max_shift=2.5), "max_shift must be an integer"),
    (dict(partners=0), "partners"),
    (dict(split="valid"), "Unknown split 'valid'"),
    (dict(shift_pixels=2), "use max_shift"),
    (dict(binarize="fixed"), "binarize"),
    (dict(limit=1), "different classes"),
    (dict(split="test", holdout_validation=True), "holdout_validation applies to the 'train' split"),
])
def test_bad_arguments(kwargs, message):
    kwargs = {"split": "train", **kwargs}
    with pytest.raises(ValueError, match=message):
        data.load("multi_mnist", **kwargs)


def test_other_entry_points_refuse_clearly():
    with pytest.raises(ValueError, match="has no arrays"):
        data.load_arrays("multi_mnist", "train")
    with pytest.raises(ValueError, match="only to 'multi_mnist'"):
        data.load("mnist_sample", "test", max_shift=2)
    with pytest.raises(ValueError, match="multi_mnist"):
        data.load("nope", "test")
    with pytest.raises(ValueError, match="partners"):
        data.num_examples("multi_mnist", "test", partners=0)
