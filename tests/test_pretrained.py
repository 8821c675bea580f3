"""The shipped weights load by name and reach their stated accuracy."""

import pytest

import caps_zoo
from caps_zoo import data


@pytest.mark.parametrize("name", caps_zoo.list_models(pretrained=True))
def test_shipped_weights_reach_stated_accuracy_on_shipped_sample(name):
    metadata = caps_zoo.load_metadata(name)
    model = caps_zoo.load(name)  # weights="mnist", the default
    metrics = model.evaluate(
        data.load("mnist_sample", "test", batch_size=250), return_dict=True, verbose=0
    )
    # One image of 1,000 may flip between CPUs (summation order).
    assert metrics["accuracy"] == pytest.approx(metadata["sample_accuracy"], abs=1e-3)
    assert metadata["test_accuracy"] > 0.98  # a trained model, not a random one
    for key in ("recipe_command", "data", "epochs_completed", "wall_hours", "machine"):
        assert metadata[key], key
