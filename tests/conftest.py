"""Test set-up: two logical CPU devices (for MirroredStrategy tests), which
must be configured before TensorFlow initialises its devices, and a float32
policy restored after every test (training.train sets the global policy)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    _cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
)


@pytest.fixture(autouse=True)
def _float32_policy():
    yield
    keras.mixed_precision.set_global_policy("float32")


@pytest.fixture(scope="session")
def sample_batch():
    """256 real MNIST test images and labels (shipped with the package)."""
    from caps_zoo import data

    images, labels = data.load_arrays("mnist_sample", "test")
    return (images[:256].astype("float32") / 255.0)[..., None], labels[:256].astype("int32")
