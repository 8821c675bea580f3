"""Capsule networks on overlapping digits (MultiMNIST, digits_per_image=2):
the pair metric, the 2-hot margin loss, the decoder run once per digit, and
the recipe on real pairs."""

import json
import runpy
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import caps_zoo
from caps_zoo import data, losses, overlapping_digits

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "train_capsnet.py"
# A small capsnet for 36x36 pairs: the paths of the full one at a fraction of the cost.
SMALL = dict(image_shape=(36, 36, 1), digits_per_image=2, conv_filters=(32,),
             primary_capsule_types=4, decoder_units=(64,))


def test_pair_metric_on_constructed_scores():
    scores = np.array([
        [0.9, 0.8, 0.1, 0.0],  # longest 0, 1
        [0.9, 0.8, 0.1, 0.0],
        [0.9, 0.8, 0.1, 0.0],
        [0.1, 0.2, 0.3, 0.4],  # longest 3, 2
    ], "float32")
    label_ids = np.array([[1, 0], [0, 2], [2, 3], [2, 3]])
    both, one = overlapping_digits.digit_matches(scores, label_ids)
    np.testing.assert_array_equal(both, [1, 0, 0, 1])  # the order of the labels does not matter
    np.testing.assert_array_equal(one, [1, 1, 0, 1])
    np.testing.assert_array_equal(overlapping_digits.predicted_digits(scores, 2), [[0, 1]] * 3 + [[3, 2]])
    metric = overlapping_digits.PairAccuracy()
    metric.update_state(label_ids, scores)
    assert float(metric.result()) == pytest.approx(0.5)


def test_ties_are_not_credited():
    scores = np.array([
        [0.5, 0.5, 0.5, 0.5],  # all capsules one length: no information
        [0.9, 0.4, 0.4, 0.0],  # the second place shared by a label and another class
        [0.9, 0.9, 0.1, 0.0],  # the labels tie with each other: fine
        [0.3, 0.3, 0.3, 0.9],  # the label 1 ties the two other candidates for second place
    ], "float32")
    label_ids = np.array([[0, 1], [0, 1], [1, 0], [3, 1]])
    both, one = overlapping_digits.digit_matches(scores, label_ids)
    np.testing.assert_array_equal(both, [0, 0, 1, 0])
    np.testing.assert_array_equal(one, [0, 1, 1, 1])


def test_pair_metric_matches_a_sorting_reference_on_random_scores():
    rng = np.random.default_rng(0)
    scores = rng.random((500, 10)).astype("float32")
    first = rng.integers(0, 10, 500)
    label_ids = np.stack([first, (first + rng.integers(1, 10, 500)) % 10], axis=1)
    top_two = np.argsort(-scores, axis=1)[:, :2]  # no ties among random floats
    expected_both = [set(t) == set(l) for t, l in zip(top_two, label_ids)]
    expected_one = [bool(set(t) & set(l)) for t, l in zip(top_two, label_ids)]
    both, one = overlapping_digits.digit_matches(scores, label_ids)
    np.testing.assert_array_equal(both, expected_both)
    np.testing.assert_array_equal(one, expected_one)
    assert 0 < np.mean(expected_both) < np.mean(expected_one) < 1


def test_capsnet_at_36x36_has_sabours_parameter_count():
    # Sabour et al. Sec. 6: 11.36M parameters for MultiMNIST's CapsNet.
    model = caps_zoo.create_model("capsnet", image_shape=(36, 36, 1), digits_per_image=2)
    assert model.count_params() == 11_361_808


@pytest.fixture(scope="module")
def pairs():
    try:
        batch = next(iter(data.load("multi_mnist", "validation", batch_size=64)))
    except data.DataUnavailableError as error:
        pytest.skip(str(error))
    return batch


def test_loss_terms_are_the_2hot_margin_and_one_reconstruction_per_digit(pairs):
    keras.utils.set_random_seed(0)
    model = caps_zoo.create_model("capsnet", **SMALL)
    merged, targets = pairs
    merged, targets = merged[:8], {k: v[:8] for k, v in targets.items()}
    outputs, terms = model.forward_with_loss_terms(merged, targets, training=False)
    scores = outputs["scores"].numpy().astype("float64")
    two_hot = targets["labels_2hot"].numpy()
    # Sabour's eq. 4 by hand, with T_k = 1 for both present digits.
    margin = (two_hot * np.maximum(0, 0.9 - scores) ** 2
              + 0.5 * (1 - two_hot) * np.maximum(0, scores - 0.1) ** 2).sum(-1)
    np.testing.assert_allclose(terms["margin_loss"], margin, rtol=1e-5, atol=1e-7)
    # The decoder once per digit, masked by that digit's own class, against its source digit.
    ids, digits = targets["label_ids"].numpy(), targets["digits"].numpy()
    poses = outputs["poses"]
    expected = 0.0
    for k in range(2):
        alone = model.decode(poses, ids[:, k]).numpy()
        np.testing.assert_allclose(outputs["reconstruction"][:, k], alone, atol=1e-6)
        expected = expected + 0.0005 * ((alone - digits[:, k]) ** 2).reshape(8, -1).sum(-1)
    np.testing.assert_allclose(terms["reconstruction_squared_error"], expected, rtol=1e-5)
    # The two passes differ: each reads its own capsule.
    assert not np.allclose(outputs["reconstruction"][:, 0], outputs["reconstruction"][:, 1])


def test_images_alone_reconstruct_the_two_longest_capsules(pairs):
    model = caps_zoo.create_model("capsnet", **SMALL)
    merged = pairs[0][:4]
    outputs = model(merged)
    assert outputs["reconstruction"].shape == (4, 2, 36, 36, 1)
    top = overlapping_digits.predicted_digits(outputs["scores"], 2)
    np.testing.assert_allclose(outputs["reconstruction"], model.decode_each(outputs["poses"], top), atol=1e-6)
    classify, _ = model.serving_endpoints()["classify"]
    classes = classify(merged)["classes"]
    assert classes.dtype == tf.int64 and classes.shape == (4, 2)
    np.testing.assert_array_equal(classes, top)


def test_bad_pair_targets_are_explained(pairs):
    model = caps_zoo.create_model("capsnet", **SMALL)
    merged, targets = pairs
    with pytest.raises(ValueError, match=r"targets\['label_ids'\] \(batch, 2\) and targets\['digits'\]"):
        model.forward_with_loss_terms(merged, targets["label_ids"], training=False)
    with pytest.raises(ValueError, match=r"targets\['digits'\].*\(batch, 2, 36, 36, 1\)"):
        model.forward_with_loss_terms(merged, {**targets, "digits": merged}, training=False)
    with pytest.raises(ValueError, match="digits_per_image must be 1"):
        caps_zoo.create_model("capsnet", digits_per_image=3)


def test_config_round_trip_keeps_pairs():
    model = caps_zoo.create_model("capsnet", **SMALL)
    again = type(model).from_config(model.get_config())
    again.build()
    assert again.digits_per_image == 2 and again.image_shape == (36, 36, 1)
    assert again.count_params() == model.count_params()


def test_loss_falls_and_pair_accuracy_is_logged_on_real_pairs():
    keras.utils.set_random_seed(0)
    model = caps_zoo.create_model("capsnet", **SMALL)
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    train = data.load("multi_mnist", "train", batch_size=32, limit=256, seed=0)
    history = model.fit(train, epochs=5, verbose=0)
    loss = history.history["loss"]
    assert loss[-1] < 0.7 * loss[0], loss
    assert "pair_accuracy" in history.history and "accuracy" not in history.history


def test_recipe_trains_and_selects_on_pairs(tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    argv = [str(RECIPE), "--model", "capsnet", "--dataset", "multi_mnist", "--epochs", "1",
            "--batch-size", "16", "--steps-per-epoch", "2", "--validation", "--validation-size", "64",
            "--max-shift", "3", "--output-dir", str(run_dir), "--verbose", "0"]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(RECIPE), run_name="__main__")
    config = json.loads((run_dir / "config.json").read_text())
    assert config["selection_metric"] == "val_pair_accuracy" and config["shift_pixels"] == 0
    assert config["max_shift"] == 3
    assert config["model_overrides"] == {"image_shape": [36, 36, 1], "digits_per_image": 2}
    best = json.loads((run_dir / "best.json").read_text())
    assert best["metric"] == "val_pair_accuracy" and 0 <= best["value"] <= 1
    assert '"pair_accuracy"' in capsys.readouterr().out

    # Shipped as weights="multi_mnist": load() rebuilds the pair model, and the
    # stated sample figure is reproduced.
    saved = tmp_path / "saved_models"
    monkeypatch.setenv("CAPS_ZOO_SAVED_MODELS", str(saved))
    ship = RECIPE.parent / "ship_weights.py"
    monkeypatch.setattr(sys, "argv", [str(ship), "--run-dir", str(run_dir), "--command", "test",
                                      "--tag", "multi_mnist", "--test-limit", "20"])
    runpy.run_path(str(ship), run_name="__main__")
    metadata = caps_zoo.load_metadata("capsnet", "multi_mnist")
    assert metadata["data"].endswith("200 fixed test pairs (10 partners per MNIST test image, shifts up to 3 px)")
    assert metadata["max_shift"] == 3 and metadata["training_pairs_seen"] == 32 and 0 <= metadata["test_pair_accuracy"] <= 1
    assert metadata["test_at_least_one_accuracy"] >= metadata["test_pair_accuracy"]
    assert (saved / "capsnet" / "multi_mnist.separation.png").stat().st_size > 0
    model = caps_zoo.load("capsnet", weights="multi_mnist")
    assert model.digits_per_image == 2 and model.image_shape == (36, 36, 1)
    sample = model.evaluate(data.load("multi_mnist", "test", batch_size=250, limit=500, max_shift=3),
                            return_dict=True, verbose=0)
    assert sample["pair_accuracy"] == pytest.approx(metadata["sample_pair_accuracy"], abs=1e-6)


def test_shifts_of_pairs_are_their_own():
    from caps_zoo.training import TrainConfig

    with pytest.raises(ValueError, match="shifts each digit itself"):
        TrainConfig(model="capsnet", dataset="multi_mnist").validate()
    with pytest.raises(ValueError, match="max_shift is for"):
        TrainConfig(model="capsnet", max_shift=3).validate()
