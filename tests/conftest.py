"""Test set-up: two logical CPU devices (for MirroredStrategy tests), which
must be configured before TensorFlow initialises its devices, and a float32
policy restored after every test (training.train sets the global policy)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    _cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
)


# Notebooks whose execution (nbmake) runs only with ``-m slow``: each
# re-runs, in a kernel of its own, the loading, evaluation and short
# trainings that the family's tests check in the default run (30-80 s each,
# 270 s of the default run's 2,113 s on one core, -n 0, 2026-12-07). The
# quickstart, the README's entry point, stays in the default run, and
# tests/test_notebooks.py checks every notebook's committed outputs there.
SLOW_NOTEBOOKS = {"capsule_networks.ipynb", "cvgan.ipynb", "gran.ipynb", "rcn.ipynb",
                  "training.ipynb", "writers.ipynb"}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """xdist ``--dist loadgroup`` (setup.cfg): every test not already in a
    group (test_model_families groups each family's checks) is grouped by
    its file, as ``loadscope`` would, so module-scoped fixtures are built
    once. Runs before xdist's own hook, which reads the groups, and before
    ``-m "not slow"`` deselects (so SLOW_NOTEBOOKS are left out by it)."""
    for item in items:
        if item.path.suffix == ".ipynb" and item.path.name in SLOW_NOTEBOOKS:
            item.add_marker(pytest.mark.slow)
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(item.path.name))


@pytest.fixture(autouse=True)
def _float32_policy():
    yield
    keras.mixed_precision.set_global_policy("float32")


@pytest.fixture(scope="session")
def mnist_sample():
    """The 1,000 real MNIST test images shipped with the package: float
    images in [0, 1] ``(1000, 28, 28, 1)`` and int32 labels."""
    from caps_zoo import data

    images, labels = data.load_arrays("mnist_sample", "test")
    return (images.astype("float32") / 255.0)[..., None], labels.astype("int32")


@pytest.fixture(scope="session")
def sample_batch(mnist_sample):
    """The first 256 of them, with labels."""
    images, labels = mnist_sample
    return images[:256], labels[:256]


@pytest.fixture(scope="session")
def pretrained_capsnet():
    """The shipped capsnet (the classifier behind the zoo's Frechet distance)."""
    import caps_zoo

    return caps_zoo.load("capsnet")


@pytest.fixture
def tiny_mnist(tmp_path, monkeypatch):
    """A CAPS_ZOO_DATA folder whose mnist.npz holds real MNIST test images
    (256 as its training split, 128 as its test split): recipes end to end."""
    from caps_zoo import data

    images, labels = data.load_arrays("mnist_sample", "test")
    folder = tmp_path / "data"
    folder.mkdir()
    np.savez(
        folder / "mnist.npz",
        x_train=images[:256],
        y_train=labels[:256],
        x_test=images[256:384],
        y_test=labels[256:384],
    )
    monkeypatch.setenv(data.DATA_ENV, str(folder))
    return folder


def perturb_moving_statistics(model, seed=0):
    """Batch-norm moving means and variances far from their initial 0 and 1,
    so that a round trip or export that dropped them would show."""
    rng = np.random.default_rng(seed)
    for variable in model.non_trainable_variables:
        if "moving_mean" in variable.path:
            variable.assign(rng.normal(0, 0.5, variable.shape).astype("float32"))
        elif "moving_variance" in variable.path:
            variable.assign(rng.uniform(0.5, 2.0, variable.shape).astype("float32"))


class Killed(Exception):
    """Raised by ``kill_at_epoch`` callbacks: a run killed between epochs."""


class _KillAtEpoch(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise Killed


@pytest.fixture
def kill_at_epoch():
    """``kill_at_epoch(n)``: a callback that raises ``Killed`` as epoch n begins."""
    return _KillAtEpoch


@pytest.fixture
def scratch_saved_models(tmp_path, monkeypatch):
    """An empty saved_models/ for recipes to ship into, but for the pretrained
    capsnet that measures generators' Frechet distances."""
    import shutil

    from caps_zoo import registry

    folder = tmp_path / "saved_models"
    shutil.copytree(registry.saved_models_dir() / "capsnet", folder / "capsnet")
    monkeypatch.setenv("CAPS_ZOO_SAVED_MODELS", str(folder))
    return folder
