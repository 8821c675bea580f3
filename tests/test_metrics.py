"""caps_zoo.metrics: the GAN battle (GAM, Im et al. 2016) on stand-in models
whose error rates are known exactly, the Frechet distance (closed forms, and
real MNIST images through the pretrained capsnet), nearest neighbours, and
the battle recipe end to end."""

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

from caps_zoo import data, metrics

# Stand-in models draw constant images; a stand-in discriminator calls an
# image real iff its mean exceeds its threshold. So every error rate is a
# count: real test images of values (i + 0.5) / 100, i < 100, give a
# discriminator with threshold t (a multiple of 0.01) an error of exactly t.
REAL_VALUES = (np.arange(100) + 0.5) / 100
STRONG = (0.1, 0.3, 0.5, 0.7)  # samples: 3/4 above 0.2 and above 0.25
WEAK = (0.05, 0.1, 0.15, 0.3)  # samples: 1/4 above 0.2 and 0.25, 2/4 above 0.12
N_SAMPLES = 400  # a multiple of 4 (and of the chunk sizes' 4): fractions are exact


def constant_images(values, size=28):
    values = np.asarray(values, dtype=np.float32)
    return np.broadcast_to(values[:, None, None, None], (len(values), size, size, 1)).copy()


X_TEST = constant_images(REAL_VALUES)
X_TRAIN = constant_images(REAL_VALUES[::2])  # (2j + 0.5) / 100, j < 50


class FakeGenerator:
    """``sample(n, seed)``: constant images cycling through ``values`` (so the
    share of each value is exact), in an order shuffled by the seed."""

    def __init__(self, name, values):
        self.name = name
        self.values = np.asarray(values, dtype=np.float32)
        self.calls = []

    def sample(self, n, seed=None):
        self.calls.append((n, seed))
        values = np.resize(self.values, n)
        np.random.default_rng(seed).shuffle(values)
        return {"images": constant_images(values), "noise": np.zeros((n, 3))}


class FakeGAN(FakeGenerator):
    """A generator plus a discriminator: p(real) = 0.9 if the image's mean is
    above ``threshold``, else 0.1."""

    def __init__(self, name, threshold, values=STRONG):
        super().__init__(name, values)
        self.threshold = threshold

    def discriminate(self, images):
        return np.where(images.mean(axis=(1, 2, 3)) > self.threshold, 0.9, 0.1)


def battle(m1, m2, **kwargs):
    return metrics.gam_battle(m1, m2, X_TRAIN, X_TEST, n_samples=N_SAMPLES, batch_size=100, **kwargs)


# -- error rates -------------------------------------------------------------------


def test_discriminator_error_counts_the_wrong_side_of_one_half():
    gan = FakeGAN("gran1", threshold=0.2)
    # Real images: wrong when p < 0.5 (values <= 0.2: 20 of 100).
    assert metrics.discriminator_error(gan, X_TEST, real=True) == 0.2
    # The same images called generated: wrong when p >= 0.5.
    assert metrics.discriminator_error(gan, X_TEST, real=False) == 0.8
    # Chunks of 7 give the same; p = 0.5 exactly counts as "real".
    assert metrics.discriminator_error(gan, X_TEST, real=True, batch_size=7) == 0.2

    class Undecided:
        name = "undecided"

        def discriminate(self, images):
            return np.full((len(images), 1), 0.5)  # (n, 1) is accepted too

    assert metrics.discriminator_error(Undecided(), X_TEST, real=True) == 0.0
    assert metrics.discriminator_error(Undecided(), X_TEST, real=False) == 1.0


def test_discriminator_error_takes_tensors():
    import tensorflow as tf

    class TensorGAN(FakeGAN):
        def discriminate(self, images):
            return tf.constant(super().discriminate(images))

    assert metrics.discriminator_error(TensorGAN("t", 0.3), X_TEST, real=True) == 0.3


def test_discriminator_error_rejects_bad_input():
    gan = FakeGAN("gran1", threshold=0.2)
    with pytest.raises(ValueError, match=r"\(n, height, width, channels\)"):
        metrics.discriminator_error(gan, X_TEST[..., 0], real=True)
    with pytest.raises(TypeError, match="float images"):
        metrics.discriminator_error(gan, (X_TEST * 255).astype(np.uint8), real=True)
    with pytest.raises(ValueError, match="at least one image"):
        metrics.discriminator_error(gan, X_TEST[:0], real=True)
    with pytest.raises(TypeError, match="real must be True"):
        metrics.discriminator_error(gan, X_TEST, real="yes")

    class Logits(FakeGAN):
        def discriminate(self, images):
            return 4 * super().discriminate(images) - 2

    with pytest.raises(ValueError, match="probabilities in \\[0, 1\\] \\(not logits\\)"):
        metrics.discriminator_error(Logits("l", 0.2), X_TEST, real=True)

    class OnePerBatch(FakeGAN):
        def discriminate(self, images):
            return np.array([0.9])

    with pytest.raises(ValueError, match="one probability per image"):
        metrics.discriminator_error(OnePerBatch("o", 0.2), X_TEST, real=True)


def test_samples_come_in_chunks_with_repeatable_seeds():
    generator = FakeGenerator("g", STRONG)
    first = metrics.draw_samples(generator, 1000, seed=3, batch_size=300)
    assert first.shape == (1000, 28, 28, 1) and first.dtype == np.float32
    sizes, seeds = zip(*generator.calls)
    assert sizes == (300, 300, 300, 100)
    assert len(set(seeds)) == 4 and all(isinstance(s, int) for s in seeds)
    np.testing.assert_array_equal(metrics.draw_samples(generator, 1000, seed=3, batch_size=300), first)
    assert not np.array_equal(metrics.draw_samples(generator, 1000, seed=4, batch_size=300), first)
    generator.calls.clear()
    metrics.draw_samples(generator, 10, seed=None, batch_size=4)
    assert [seed for _, seed in generator.calls] == [None, None, None]


def test_samples_must_follow_the_protocol():
    class Wrong(FakeGenerator):
        def sample(self, n, seed=None):
            return self.output(n)

    wrong = Wrong("wrong", STRONG)
    wrong.output = lambda n: constant_images(np.full(n, 0.5))
    with pytest.raises(TypeError, match="'images' entry"):
        metrics.draw_samples(wrong, 5)
    wrong.output = lambda n: {"images": constant_images(np.full(n, 0.2)) * 2 - 1}
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        metrics.draw_samples(wrong, 5)
    wrong.output = lambda n: {"images": constant_images(np.full(n + 1, 0.5))}
    with pytest.raises(ValueError, match="returned 6 images; expected 5"):
        metrics.draw_samples(wrong, 5)


def test_sample_error_rate_is_the_share_of_samples_judged_real():
    gan = FakeGAN("gran3", threshold=0.25)
    draw = FakeGenerator("draw", STRONG)  # no discriminator needed
    assert metrics.sample_error_rate(gan, draw, n_samples=N_SAMPLES, batch_size=100) == 0.75
    assert metrics.sample_error_rate(gan, draw, n_samples=N_SAMPLES, seed=9, batch_size=100) == 0.75
    assert metrics.sample_error_rate(gan, FakeGenerator("dvae", WEAK), n_samples=N_SAMPLES,
                                     batch_size=100) == 0.25


# -- the battle (eqs. 10 and 11) -------------------------------------------------------


def test_model_1_wins_when_its_samples_fool_the_other_more():
    m1, m2 = FakeGAN("gran1", 0.2, STRONG), FakeGAN("gran3", 0.25, WEAK)
    result = battle(m1, m2)
    assert result.errors == {
        "D1(x_train)": 0.2, "D1(x_test)": 0.2, "D1(G1(z))": 0.75, "D1(G2(z))": 0.25,
        "D2(x_train)": 0.26, "D2(x_test)": 0.25, "D2(G1(z))": 0.75, "D2(G2(z))": 0.25,
    }
    assert result.r_test == pytest.approx(0.2 / 0.25)  # 0.8: within 0.3 of 1
    assert result.r_sample == pytest.approx(0.25 / 0.75)  # D1 fooled less than D2
    assert result.winner == "gran1"
    assert (result.model_1, result.model_2, result.battler) == ("gran1", "gran3", "GRAN1 vs. GRAN3")
    assert result.n_samples == N_SAMPLES and result.tolerance == 0.3
    # Repeatable: the same seed, the same samples, the same numbers.
    assert battle(m1, m2) == result


def test_model_2_wins_when_its_samples_fool_the_other_more():
    result = battle(FakeGAN("gran1", 0.2, WEAK), FakeGAN("gran3", 0.25, STRONG))
    assert result.errors["D1(G2(z))"] == 0.75 and result.errors["D2(G1(z))"] == 0.25
    assert result.r_sample == pytest.approx(3.0)
    assert result.winner == "gran3"


def test_a_biased_test_ratio_makes_a_tie_unless_the_tolerance_admits_it():
    m1, m2 = FakeGAN("gran1", 0.12, STRONG), FakeGAN("gran5", 0.24, WEAK)
    result = battle(m1, m2)
    assert result.r_test == pytest.approx(0.5)  # |0.5 - 1| > 0.3
    assert result.r_sample == pytest.approx(0.5 / 0.75)  # would make gran1 the winner
    assert result.winner == "tie"
    assert battle(m1, m2, test_ratio_tolerance=0.6).winner == "gran1"


def test_zero_over_zero_is_equal_and_x_over_zero_is_infinite():
    # Perfect discriminators (threshold 0: every real image is > 0) whose
    # generators never fool them (images of 0): 0 / 0 twice, a tie.
    result = battle(FakeGAN("a", 0.0, [0.0]), FakeGAN("b", 0.0, [0.0]))
    assert (result.r_test, result.r_sample, result.winner) == (1.0, 1.0, "tie")
    # G2 always fools D1, G1 never fools D2: r_sample = 1 / 0.
    result = battle(FakeGAN("a", 0.0, [0.0]), FakeGAN("b", 0.0, [0.5]))
    assert result.r_test == 1.0 and result.r_sample == math.inf and result.winner == "b"
    # D2 makes no error on the test set, D1 does: r_test = 0.2 / 0: no winner.
    result = battle(FakeGAN("a", 0.2, [0.5]), FakeGAN("b", 0.0, [0.0]))
    assert result.r_test == math.inf and result.r_sample == 0.0 and result.winner == "tie"
    assert metrics.error_ratio(0.0, 0.0) == 1.0
    assert metrics.error_ratio(0.3, 0.0) == math.inf
    assert metrics.error_ratio(0.3, 0.6) == 0.5


def test_winner_rule_of_eq_11():
    assert metrics.battle_winner(0.79, 1.75) == "m2"  # the paper's MNIST GRAN1 vs. GRAN3
    assert metrics.battle_winner(1.29, 1.011) == "m2"  # its CIFAR-10 GRAN1 vs. GRAN5
    assert metrics.battle_winner(1.0, 0.5) == "m1"
    assert metrics.battle_winner(1.0, 1.0) == "tie"
    assert metrics.battle_winner(1.5, 0.5) == "tie"
    assert metrics.battle_winner(1.5, 0.5, tolerance=0.5) == "m1"
    assert metrics.battle_winner(math.inf, 0.5, tolerance=1e9) == "tie"


def test_battle_needs_two_names_and_valid_arguments():
    with pytest.raises(ValueError, match="two different names"):
        battle(FakeGAN("gran3", 0.2), FakeGAN("gran3", 0.25))
    result = battle(FakeGAN("gran3", 0.2), FakeGAN("gran3", 0.25), names=("run1", "run2"))
    assert result.model_1 == "run1"
    with pytest.raises(ValueError, match="test_ratio_tolerance"):
        battle(FakeGAN("a", 0.2), FakeGAN("b", 0.25), test_ratio_tolerance=-1)
    with pytest.raises(TypeError, match="x_test: expected float images"):
        metrics.gam_battle(FakeGAN("a", 0.2), FakeGAN("b", 0.25), X_TRAIN, (X_TEST * 255).astype("uint8"))


def test_result_to_dict_is_plain_data():
    result = battle(FakeGAN("gran1", 0.2, STRONG), FakeGAN("gran3", 0.25, WEAK))
    as_dict = result.to_dict()
    assert set(as_dict) == {"model_1", "model_2", "r_test", "r_sample", "winner", "errors",
                            "n_samples", "tolerance"}
    assert json.loads(json.dumps(as_dict)) == as_dict


def test_battle_table_has_the_layout_of_table_2():
    won = battle(FakeGAN("gran1", 0.2, STRONG), FakeGAN("gran3", 0.25, WEAK))
    tie = battle(FakeGAN("gran1", 0.12, STRONG), FakeGAN("gran5", 0.24, WEAK))
    infinite = battle(FakeGAN("gran3", 0.0, [0.0]), FakeGAN("gran5", 0.0, [0.5]))
    table = metrics.battle_table([won, tie, infinite])
    lines = table.splitlines()
    assert lines[0].split() == ["battler", "r_test", "r_sample", "winner"]
    assert lines[1].split() == ["GRAN1", "vs.", "GRAN3", "0.800", "0.333", "GRAN1"]
    assert lines[2].split() == ["GRAN1", "vs.", "GRAN5", "0.500", "0.667", "tie"]
    assert lines[3].split() == ["GRAN3", "vs.", "GRAN5", "1.000", "inf", "GRAN5"]
    assert "|r_test - 1| <= 0.3" in lines[4]
    # Battles with different tolerances get a column.
    other = battle(FakeGAN("gran1", 0.12, STRONG), FakeGAN("gran5", 0.24, WEAK), test_ratio_tolerance=0.6)
    lines = metrics.battle_table([tie, other]).splitlines()
    assert lines[0].split() == ["battler", "r_test", "r_sample", "tolerance", "winner"]
    assert lines[2].split()[-2:] == ["0.6", "GRAN1"]
    with pytest.raises(ValueError, match="at least one"):
        metrics.battle_table([])


def test_sample_error_table_has_the_layout_of_table_3():
    table = metrics.sample_error_table([("gran1", "dvae", 0.058), ("gran3", "draw", 0.106)])
    lines = table.splitlines()
    assert lines[0].split() == ["battler", "error"]
    assert lines[1].split() == ["GRAN1", "vs.", "DVAE", "0.058"]
    assert lines[2].split() == ["GRAN3", "vs.", "DRAW", "0.106"]


# -- Frechet distance ---------------------------------------------------------------


def test_frechet_distance_of_a_set_with_itself_is_zero():
    features = np.random.default_rng(0).standard_normal((300, 20)) @ np.diag(np.arange(1, 21))
    assert metrics.frechet_distance(features, features) == pytest.approx(0, abs=1e-6)


def whitened(rng, n, dims):
    """``(n, dims)`` whose sample mean is 0 and sample covariance the identity."""
    values = rng.standard_normal((n, dims))
    values -= values.mean(axis=0)
    return values @ np.linalg.inv(np.linalg.cholesky(np.cov(values, rowvar=False))).T


def test_frechet_distance_matches_the_closed_form_for_diagonal_gaussians():
    rng = np.random.default_rng(1)
    dims = 6
    mean_a, mean_b = rng.normal(size=dims), rng.normal(size=dims)
    var_a, var_b = rng.uniform(0.1, 3, dims), rng.uniform(0.1, 3, dims)
    a = mean_a + whitened(rng, 500, dims) * np.sqrt(var_a)
    b = mean_b + whitened(rng, 400, dims) * np.sqrt(var_b)
    expected = np.sum((mean_a - mean_b) ** 2) + np.sum((np.sqrt(var_a) - np.sqrt(var_b)) ** 2)
    assert metrics.frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_is_symmetric():
    rng = np.random.default_rng(2)
    a = rng.standard_normal((200, 12)) @ rng.standard_normal((12, 12))
    b = 0.5 + rng.standard_normal((250, 12)) @ rng.standard_normal((12, 12))
    forward, backward = metrics.frechet_distance(a, b), metrics.frechet_distance(b, a)
    assert forward > 1
    assert forward == pytest.approx(backward, rel=1e-9)


def test_frechet_distance_rejects_bad_features():
    with pytest.raises(ValueError, match="same dimension"):
        metrics.frechet_distance(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="n >= 2"):
        metrics.frechet_distance(np.zeros((1, 3)), np.zeros((5, 3)))


@pytest.fixture(scope="module")
def capsnet(pretrained_capsnet):
    return pretrained_capsnet


@pytest.fixture(scope="module")
def mnist_images(mnist_sample):
    return mnist_sample[0]


def test_frechet_distance_grows_with_noise_on_real_mnist(capsnet, mnist_images):
    reference = metrics.classifier_features(capsnet, mnist_images[:300])
    assert reference.shape == (300, 160) and reference.dtype == np.float32
    others = mnist_images[300:600]
    rng = np.random.default_rng(0)
    distances = []
    for std in (0.0, 0.1, 0.2, 0.4):
        noisy = np.clip(others + rng.normal(0, std, others.shape).astype("float32"), 0, 1)
        distances.append(metrics.frechet_distance(reference, metrics.classifier_features(capsnet, noisy)))
    # Two halves of the real test images are close; noise moves them apart, more and more.
    assert distances[0] > 0
    assert all(a < b for a, b in zip(distances, distances[1:])), distances
    assert distances[-1] > 10 * distances[0], distances
    assert metrics.frechet_distance(reference, reference) == pytest.approx(0, abs=1e-6)


def test_frechet_classifier_distance_names_what_it_measured(capsnet, mnist_images):
    real, other = mnist_images[:64], mnist_images[64:128]
    result = metrics.frechet_classifier_distance(real, other)  # loads capsnet, weights "mnist"
    assert set(result) == {"frechet_distance", "feature_classifier", "n_real", "n_generated"}
    assert result["feature_classifier"] == (
        "capsnet, weights 'mnist', 160-d class-capsule poses (10 capsules x 16)"
    )
    assert (result["n_real"], result["n_generated"]) == (64, 64)
    expected = metrics.frechet_distance(metrics.classifier_features(capsnet, real),
                                        metrics.classifier_features(capsnet, other))
    assert result["frechet_distance"] == pytest.approx(expected, rel=1e-5)
    given = metrics.frechet_classifier_distance(real, other, classifier=capsnet)
    assert given["frechet_distance"] == pytest.approx(expected, rel=1e-5)
    assert given["feature_classifier"].startswith(f"{capsnet.name} (a model object as given)")


def test_frechet_classifier_distance_without_pretrained_weights_says_so(mnist_images):
    with pytest.raises(ValueError, match="no pretrained weights 'cifar10'"):
        metrics.frechet_classifier_distance(mnist_images[:4], mnist_images[4:8], weights="cifar10")


class ReplayGenerator:
    """``sample`` returns given images (cycled from the first), e.g. real ones."""

    name = "replay"

    def __init__(self, images):
        self.images = images

    def sample(self, n, seed=None):
        return {"images": np.resize(self.images, (n, *self.images.shape[1:]))}


@pytest.mark.slow  # 44 s (3,200 classifier passes); the distance itself: the tests above
def test_sample_frechet_distance_ranks_real_images_above_noise(mnist_images):
    """A "generator" that replays real test images scores near 0; blurred
    noise far from it: the number orders sample quality."""
    # One chunk of 1,000: the replayed set is exactly the test split.
    real = metrics.sample_frechet_distance(ReplayGenerator(mnist_images), "mnist_sample",
                                           n_samples=1000, weights="mnist", batch_size=1000)
    assert real["frechet_distance"] == pytest.approx(0, abs=1e-6)
    assert real["dataset"] == "mnist_sample test split" and real["n_real"] == 1000
    rng = np.random.default_rng(0)
    noise = rng.random((200, 28, 28, 1)).astype("float32")
    fake = metrics.sample_frechet_distance(ReplayGenerator(noise), "mnist_sample",
                                           n_samples=200, weights="mnist")
    assert fake["frechet_distance"] > 100 * max(real["frechet_distance"], 1e-3)


# -- nearest neighbours ----------------------------------------------------------------


def test_nearest_neighbours_finds_an_exact_copy_at_distance_zero(mnist_images):
    train = mnist_images[:300]
    samples = np.concatenate([train[[17, 250]], np.clip(train[[5]] + 0.05, 0, 1)])
    indices, distances = metrics.nearest_neighbours(samples, train, k=3)
    assert indices.shape == distances.shape == (3, 3)
    assert indices.dtype == np.int64 and distances.dtype == np.float64
    assert list(indices[:2, 0]) == [17, 250]
    np.testing.assert_array_equal(distances[:2, 0], 0.0)
    assert np.all(distances[:2, 1] > 0)
    assert np.all(np.diff(distances, axis=1) >= 0)  # nearest first


def test_nearest_neighbours_matches_brute_force():
    rng = np.random.default_rng(3)
    train = rng.random((500, 8, 8, 1), dtype=np.float32)
    samples = rng.random((37, 8, 8, 1), dtype=np.float32)
    indices, distances = metrics.nearest_neighbours(samples, train, k=5, batch_size=10)
    brute = np.linalg.norm(
        samples.reshape(37, 1, -1).astype(np.float64) - train.reshape(1, 500, -1), axis=-1
    )
    expected = np.argsort(brute, axis=1)[:, :5]
    np.testing.assert_array_equal(indices, expected)
    np.testing.assert_allclose(distances, np.take_along_axis(brute, expected, axis=1), rtol=1e-12)


def test_nearest_neighbours_rejects_bad_input():
    train = np.zeros((4, 8, 8, 1), np.float32)
    with pytest.raises(ValueError, match="at most the number of training images"):
        metrics.nearest_neighbours(train[:1], train, k=5)
    with pytest.raises(ValueError, match="same image size"):
        metrics.nearest_neighbours(np.zeros((1, 7, 7, 1), np.float32), train)
    with pytest.raises(TypeError, match="float images"):
        metrics.nearest_neighbours(train[:1], train.astype(np.uint8))


# -- the battle recipe ---------------------------------------------------------------


@pytest.fixture
def battle_recipe():
    path = Path(__file__).resolve().parent.parent / "recipes" / "battle.py"
    spec = importlib.util.spec_from_file_location("battle_recipe", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def tiny_mnist(tmp_path, monkeypatch):
    """A CAPS_ZOO_DATA folder whose mnist.npz holds real MNIST test images."""
    images, labels = data.load_arrays("mnist_sample", "test")
    folder = tmp_path / "data"
    folder.mkdir()
    np.savez(folder / "mnist.npz", x_train=images[:256], y_train=labels[:256],
             x_test=images[256:384], y_test=labels[256:384])
    monkeypatch.setenv(data.DATA_ENV, str(folder))
    return images


# Stand-ins by name; on real MNIST (image means about 0.05 to 0.3) their
# thresholds give every discriminator some error on real images.
RECIPE_MODELS = {
    "gran1": lambda: FakeGAN("gran1", 0.10, WEAK),
    "gran3": lambda: FakeGAN("gran3", 0.12, STRONG),
    "gran5": lambda: FakeGAN("gran5", 0.13, (0.1, 0.2, 0.3, 0.4)),
    "draw": lambda: FakeGenerator("draw", (0.05, 0.11, 0.125, 0.2)),
}


def test_battle_recipe_end_to_end(battle_recipe, tiny_mnist, monkeypatch, tmp_path, capsys):
    loaded = []

    def load_model(name, weights):
        loaded.append((name, weights))
        return RECIPE_MODELS[name]()

    monkeypatch.setattr(battle_recipe, "load_model", load_model)
    out = tmp_path / "battles.json"
    battle_recipe.main(["gran1", "gran3=runs/g3.weights.npz", "gran5", "--samples", "200",
                        "--versus", "draw", "--json", str(out)])
    assert loaded == [("gran1", "mnist"), ("gran3", "runs/g3.weights.npz"), ("gran5", "mnist"),
                      ("draw", "mnist")]

    # The recipe is gam_battle on every pair, on the dataset scaled to [0, 1].
    x_train = (tiny_mnist[:256].astype("float32") / 255)[..., None]
    x_test = (tiny_mnist[256:384].astype("float32") / 255)[..., None]
    pairs = [("gran1", "gran3"), ("gran1", "gran5"), ("gran3", "gran5")]
    expected = [metrics.gam_battle(RECIPE_MODELS[a](), RECIPE_MODELS[b](), x_train, x_test,
                                   n_samples=200) for a, b in pairs]
    report = json.loads(out.read_text())
    assert report["battles"] == [result.to_dict() for result in expected]
    assert {result.winner for result in expected} != {"tie"}  # the stand-ins do battle
    assert report["gans"] == {"gran1": "mnist", "gran3": "runs/g3.weights.npz", "gran5": "mnist"}
    assert (report["n_train"], report["n_test"], report["tolerance"]) == (256, 128, 0.3)
    draw_errors = {row["gan"]: row["error"] for row in report["versus"]}
    for gan in ("gran1", "gran3", "gran5"):
        assert draw_errors[gan] == metrics.sample_error_rate(
            RECIPE_MODELS[gan](), RECIPE_MODELS["draw"](), n_samples=200)
    assert draw_errors == {"gran1": 0.75, "gran3": 0.5, "gran5": 0.25}

    printed = capsys.readouterr().out
    assert metrics.battle_table(expected) in printed
    assert "GRAN1 vs. DRAW" in printed and "0.750" in printed


def test_battle_recipe_weights_per_model(battle_recipe, tiny_mnist, monkeypatch, capsys):
    loaded = []

    def load_model(name, weights):
        loaded.append((name, weights))
        return RECIPE_MODELS[name]()

    monkeypatch.setattr(battle_recipe, "load_model", load_model)
    battles, _ = battle_recipe.main(["gran1", "gran3", "--weights", "a.npz", "b.npz",
                                     "--samples", "40", "--tolerance", "0.5"])
    assert loaded == [("gran1", "a.npz"), ("gran3", "b.npz")]
    assert battles[0].tolerance == 0.5
    # One model with two weights files: the labels tell them apart.
    battles, _ = battle_recipe.main(["gran3=run1.npz", "gran3=run2.npz", "--samples", "40"])
    assert (battles[0].model_1, battles[0].model_2) == ("gran3[run1.npz]", "gran3[run2.npz]")
    for argv in (["gran1", "gran3", "--weights", "a", "b", "c"], ["gran1"]):
        with pytest.raises(SystemExit):
            battle_recipe.main(argv)
    assert "one value or one per GAN" in capsys.readouterr().err


def test_long_calls_show_progress_and_verbose_0_silences_them(capsys):
    """Each stage of a battle and of a sample error rate gets a titled Keras
    progress bar; with verbose=0 nothing is printed (issue 15)."""
    strong, weak = FakeGAN("strong", 0.5), FakeGAN("weak", 0.9)
    battle(strong, weak)  # verbose=1, the default
    shown = capsys.readouterr().out
    for title in ("strong: drawing 400 samples", "weak: drawing 400 samples",
                  "strong: judging 50 training images", "weak: judging 400 samples G1(z)"):
        assert title in shown, shown
    assert "400/400" in shown  # the bar reached its end
    metrics.sample_error_rate(strong, weak, n_samples=N_SAMPLES, batch_size=100)
    assert "strong: judging 400 samples of weak" in capsys.readouterr().out

    battle(strong, weak, verbose=0)
    metrics.sample_error_rate(strong, weak, n_samples=N_SAMPLES, batch_size=100, verbose=0)
    assert capsys.readouterr().out == ""


def test_frechet_distance_shows_feature_progress_unless_verbose_0(capsys):
    import caps_zoo

    classifier = caps_zoo.load("capsnet")
    real, generated = constant_images([0.2, 0.8] * 4), constant_images([0.5, 0.4] * 4)
    metrics.frechet_classifier_distance(real, generated, classifier)
    shown = capsys.readouterr().out
    assert "features of 8 real images" in shown and "features of 8 generated images" in shown
    metrics.frechet_classifier_distance(real, generated, classifier, verbose=0)
    assert capsys.readouterr().out == ""
