"""Evaluating generative models: the GAN battle (GAM), a Frechet distance on
classifier features, and nearest training neighbours of samples.

    from caps_zoo import metrics

    result = metrics.gam_battle(gran1, gran3, x_train, x_test)   # Im et al. 2016, Sec. 4
    result.r_test, result.r_sample, result.winner
    print(metrics.battle_table([result]))                       # their Table 2's layout
    metrics.sample_error_rate(gran3, draw)                      # their Table 3: D of a GAN vs. DRAW

    metrics.frechet_classifier_distance(real_images, draw.sample(1000)["images"])
    indices, distances = metrics.nearest_neighbours(samples, x_train, k=3)

Models are used through two small protocols, so any of the zoo's generators
(DRAW, DCRW, the GANs) and hand-written stand-ins fit:

- generator: ``model.sample(n, seed=None)`` returns a dict whose ``"images"``
  are float ``(n, height, width, channels)`` in [0, 1];
- discriminator (GANs only): ``model.discriminate(images)`` returns the
  probability that each image is real, shape ``(n,)``.

Both are called in chunks (``batch_size``) to bound memory; per-chunk seeds
are derived from ``seed``, so a seed gives the same samples on every call
(for the same ``batch_size``). The calls that can take minutes (10,000
samples: ``sample_frechet_distance`` ~3 min on 2 CPU cores, ``gam_battle``,
``sample_error_rate``) show Keras progress bars, one per stage, titled;
``verbose=0`` silences them (Keras' convention: 1 a live bar, 2 one line
per stage).

The Generative Adversarial Metric (GAM) of Im et al. (2016), "Generating
images with recurrent adversarial networks", Sec. 4: two GANs M1 = (G1, D1)
and M2 = (G2, D2) swap opponents. With ``err`` the classification error
rate of a discriminator,

    r_test   = err(D1(x_test)) / err(D2(x_test))
    r_sample = err(D1(G2(z)))  / err(D2(G1(z)))                  (eq. 10)

and M1 wins if r_sample < 1, M2 if r_sample > 1, provided r_test ~= 1 (the
two discriminators generalise equally well, so neither sample score is
biased by an over-fitted discriminator); otherwise it is a tie (eq. 11).

The Frechet distance here is computed on the features of one of the zoo's
capsule classifiers (the digit-capsule poses of the pretrained ``capsnet``
by default). It is the formula of the FID but NOT the FID: that is defined on
Inception-v3 features of natural images, and its numbers are not comparable
with these. Results name the classifier, its weights and the feature.
"""

import dataclasses
import math

import keras
import numpy as np

from caps_zoo import checks

DEFAULT_TOLERANCE = 0.3
DEFAULT_BATCH_SIZE = 500


# -- checks and the two protocols ------------------------------------------------


def _progress(total, verbose, title, unit):
    """A Keras progress bar of ``total`` ``unit``s under a title line (both
    silent with ``verbose=0``)."""
    if verbose:
        print(title, flush=True)
    return keras.utils.Progbar(total, verbose=verbose, unit_name=unit)


def _chunk_seeds(seed, chunks):
    """One seed per chunk, derived from ``seed`` (None stays None: fresh draws)."""
    if seed is None:
        return [None] * chunks
    states = np.random.SeedSequence(int(seed)).spawn(chunks)
    # Below 2**31: every backend's seed type takes it.
    return [int(state.generate_state(1)[0] >> 1) for state in states]


def draw_samples(model, n, seed=0, batch_size=DEFAULT_BATCH_SIZE, verbose=0):
    """``n`` images from ``model.sample``, in chunks of ``batch_size``.

    Each chunk gets its own seed derived from ``seed``, so the result is
    repeatable for a given ``seed`` and ``batch_size`` (``seed=None``: new
    samples every call). Returns float32 ``(n, height, width, channels)``.
    ``verbose``: a progress bar (0, the default here: none).
    """
    n = checks.check_count("n", n)
    batch_size = checks.check_count("batch_size", batch_size)
    sizes = [min(batch_size, n - start) for start in range(0, n, batch_size)]
    bar = _progress(n, verbose, f"{_name(model)}: drawing {n:,} samples", "sample")
    chunks = []
    for size, chunk_seed in zip(sizes, _chunk_seeds(seed, len(sizes))):
        drawn = model.sample(size, seed=chunk_seed)
        if not isinstance(drawn, dict) or "images" not in drawn:
            raise TypeError(
                f"{_name(model)}.sample(n, seed) must return a dict with an 'images' entry; "
                f"got {type(drawn).__name__}"
                + (f" with keys {sorted(drawn)}." if isinstance(drawn, dict) else ".")
            )
        images = checks.check_image_array(drawn["images"], f"{_name(model)}.sample()['images']")
        if len(images) != size:
            raise ValueError(
                f"{_name(model)}.sample({size}) returned {len(images)} images; expected {size}."
            )
        chunks.append(images.astype(np.float32, copy=False))
        bar.add(size)
    return np.concatenate(chunks)


def _name(model):
    return getattr(model, "name", type(model).__name__)


def real_probabilities(model, images, batch_size=DEFAULT_BATCH_SIZE, verbose=0, what="images"):
    """``model.discriminate(images)`` in chunks: float64 ``(n,)`` in [0, 1]."""
    images = checks.check_image_array(images)
    batch_size = checks.check_count("batch_size", batch_size)
    bar = _progress(len(images), verbose, f"{_name(model)}: judging {len(images):,} {what}", "image")
    parts = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        probabilities = np.asarray(model.discriminate(chunk), dtype=np.float64)
        if probabilities.shape not in ((len(chunk),), (len(chunk), 1)):
            raise ValueError(
                f"{_name(model)}.discriminate() must return one probability per image, shape "
                f"({len(chunk)},); got shape {probabilities.shape}."
            )
        parts.append(probabilities.reshape(-1))
        bar.add(len(chunk))
    probabilities = np.concatenate(parts)
    if not np.all((probabilities >= 0) & (probabilities <= 1)):
        raise ValueError(
            f"{_name(model)}.discriminate() must return probabilities in [0, 1] (not logits); "
            f"got values in [{np.nanmin(probabilities):.3g}, {np.nanmax(probabilities):.3g}]"
            + (" and NaN." if np.isnan(probabilities).any() else ".")
        )
    return probabilities


def discriminator_error(model, images, real, batch_size=DEFAULT_BATCH_SIZE, verbose=0, what="images"):
    """The classification error rate of ``model.discriminate`` on ``images``.

    ``real=True``: the images are real, so the error is the fraction judged
    fake (probability of real < 0.5). ``real=False``: they are generated, so
    the error is the fraction judged real (probability >= 0.5).
    """
    if not isinstance(real, (bool, np.bool_)):
        raise TypeError(f"real must be True (real images) or False (generated); got {real!r}.")
    probabilities = real_probabilities(model, images, batch_size, verbose, what)
    wrong = probabilities < 0.5 if real else probabilities >= 0.5
    return float(np.mean(wrong))


# -- the battle between GANs (GAM) ------------------------------------------------


def error_ratio(numerator, denominator):
    """``numerator / denominator`` of two error rates, defined everywhere:
    0 / 0 is 1.0 (both discriminators make no error: equal), x / 0 is inf."""
    if denominator == 0:
        return 1.0 if numerator == 0 else math.inf
    return numerator / denominator


@dataclasses.dataclass(frozen=True)
class BattleResult:
    """The outcome of ``gam_battle``: the ratios of eq. 10, the winner of
    eq. 11 (a model's name or ``"tie"``) and the error rates of Table 1.

    ``errors`` maps ``"D1(x_train)"``, ``"D1(x_test)"``, ``"D1(G1(z))"``,
    ``"D1(G2(z))"`` and the same for D2 to error rates; model 1 is
    (G1, D1), model 2 is (G2, D2).
    """

    model_1: str
    model_2: str
    r_test: float
    r_sample: float
    winner: str
    errors: dict
    n_samples: int
    tolerance: float

    @property
    def battler(self):
        """``"GRAN1 vs. GRAN3"``: the paper's Table 2 label."""
        return f"{self.model_1.upper()} vs. {self.model_2.upper()}"

    def to_dict(self):
        return dataclasses.asdict(self)


def battle_winner(r_test, r_sample, tolerance=DEFAULT_TOLERANCE):
    """``"m1"``, ``"m2"`` or ``"tie"`` by eq. 11, with r_test ~= 1 read as
    ``|r_test - 1| <= tolerance``."""
    if not abs(r_test - 1.0) <= tolerance:  # also False for inf
        return "tie"
    if r_sample < 1:
        return "m1"
    if r_sample > 1:
        return "m2"
    return "tie"


def gam_battle(
    m1,
    m2,
    x_train,
    x_test,
    n_samples=10000,
    seed=0,
    test_ratio_tolerance=DEFAULT_TOLERANCE,
    batch_size=DEFAULT_BATCH_SIZE,
    names=None,
    verbose=1,
):
    """Battle two GANs by the Generative Adversarial Metric (Im et al. 2016).

    Each model's generator draws ``n_samples`` images (from ``seed``); both
    discriminators judge both sample sets and the real ``x_train`` and
    ``x_test`` (float images in [0, 1]). Returns a ``BattleResult``.

    The winner follows eq. 11: model 1 if r_sample < 1, model 2 if
    r_sample > 1, each only if r_test ~= 1; a tie otherwise (r_sample = 1,
    or r_test off). The paper never quantifies ~=, but it declares winners
    at r_test = 0.79 (MNIST) and 1.28-1.29 (CIFAR-10), so its ~= admits at
    least +-0.29: here ``|r_test - 1| <= test_ratio_tolerance``, 0.3 by
    default. Ratios of error rates are 1.0 for 0 / 0 (equally good) and inf
    for x / 0 (see ``error_ratio``).

    ``names``: the two names the result uses (default: the models' ``name``);
    they must differ, or the winner would be ambiguous. ``verbose``: progress
    bars (0: none).
    """
    names = (_name(m1), _name(m2)) if names is None else tuple(map(str, names))
    if len(names) != 2 or names[0] == names[1]:
        raise ValueError(
            f"The two battlers need two different names; got {names!r}. Pass names=(a, b)."
        )
    if not test_ratio_tolerance >= 0:
        raise ValueError(f"test_ratio_tolerance must be >= 0, got {test_ratio_tolerance!r}.")
    n_samples = checks.check_count("n_samples", n_samples)
    x_train = checks.check_image_array(x_train, "x_train")
    x_test = checks.check_image_array(x_test, "x_test")

    samples = {
        "G1(z)": draw_samples(m1, n_samples, seed, batch_size, verbose),
        "G2(z)": draw_samples(m2, n_samples, seed, batch_size, verbose),
    }
    errors = {}
    for label, model in (("D1", m1), ("D2", m2)):
        errors[f"{label}(x_train)"] = discriminator_error(model, x_train, True, batch_size, verbose,
                                                          "training images")
        errors[f"{label}(x_test)"] = discriminator_error(model, x_test, True, batch_size, verbose,
                                                         "test images")
        for source, images in samples.items():
            errors[f"{label}({source})"] = discriminator_error(model, images, False, batch_size, verbose,
                                                               f"samples {source}")

    r_test = error_ratio(errors["D1(x_test)"], errors["D2(x_test)"])
    r_sample = error_ratio(errors["D1(G2(z))"], errors["D2(G1(z))"])
    outcome = battle_winner(r_test, r_sample, test_ratio_tolerance)
    winner = {"m1": names[0], "m2": names[1], "tie": "tie"}[outcome]
    return BattleResult(
        model_1=names[0],
        model_2=names[1],
        r_test=r_test,
        r_sample=r_sample,
        winner=winner,
        errors=errors,
        n_samples=n_samples,
        tolerance=float(test_ratio_tolerance),
    )


def sample_error_rate(gan, generator, n_samples=10000, seed=0, batch_size=DEFAULT_BATCH_SIZE, verbose=1):
    """The error rate of ``gan``'s discriminator on ``generator``'s samples:
    the fraction of them it judges real (Im et al.'s Table 3, e.g. GRAN's D
    on DRAW's samples; lower means the samples are easier to tell apart).
    ``verbose``: progress bars (0: none)."""
    samples = draw_samples(generator, n_samples, seed, batch_size, verbose)
    return discriminator_error(gan, samples, real=False, batch_size=batch_size, verbose=verbose,
                               what=f"samples of {_name(generator)}")


def _format_ratio(value):
    return "inf" if math.isinf(value) else f"{value:.3f}"


def _text_table(header, rows):
    """Lines of a plain-text table: the first column left-aligned, the others
    right-aligned, two spaces apart."""
    widths = [max(len(str(row[i])) for row in [header] + rows) for i in range(len(header))]

    def line(row):
        cells = [str(row[0]).ljust(widths[0])]
        cells += [str(cell).rjust(width) for cell, width in zip(row[1:], widths[1:])]
        return "  ".join(cells).rstrip()

    return [line(header)] + [line(row) for row in rows]


def battle_table(results):
    """Battles as text in the layout of Im et al.'s Table 2 (battler,
    r_test, r_sample, winner), then the tolerance on r_test that was used
    (a column instead if the battles used different ones)."""
    results = list(results)
    if not results:
        raise ValueError("battle_table needs at least one BattleResult.")
    tolerances = sorted({result.tolerance for result in results})
    header = ["battler", "r_test", "r_sample"] + (["tolerance"] if len(tolerances) > 1 else [])
    header.append("winner")
    rows = []
    for result in results:
        row = [result.battler, _format_ratio(result.r_test), _format_ratio(result.r_sample)]
        if len(tolerances) > 1:
            row.append(f"{result.tolerance:g}")
        row.append(result.winner.upper() if result.winner != "tie" else "tie")
        rows.append(row)
    lines = _text_table(header, rows)
    bound = f"{tolerances[0]:g}" if len(tolerances) == 1 else "tolerance"
    lines.append(
        "winner (eq. 11): the first model if r_sample < 1, the second if r_sample > 1, "
        f"provided r_test ~= 1, read as |r_test - 1| <= {bound}; otherwise a tie"
    )
    return "\n".join(lines)


def sample_error_table(rows):
    """Rows ``(gan_name, other_model_name, error)`` as text in the layout of
    Im et al.'s Table 3 (battler, error)."""
    rows = [(f"{gan.upper()} vs. {other.upper()}", f"{error:.3f}") for gan, other, error in rows]
    if not rows:
        raise ValueError("sample_error_table needs at least one row.")
    lines = _text_table(["battler", "error"], [list(row) for row in rows])
    lines.append("error: the fraction of the second model's samples the GAN's discriminator judges real")
    return "\n".join(lines)


# -- Frechet distance on classifier features --------------------------------------


def _features(values, what):
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or len(values) < 2:
        raise ValueError(
            f"{what}: expected features (n, dims) with n >= 2; got shape {values.shape}."
        )
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{what}: features must be finite.")
    return values


def _psd_sqrt(matrix):
    """The symmetric square root of a positive semi-definite matrix (eigh;
    tiny negative eigenvalues from rounding are clipped to 0)."""
    eigenvalues, eigenvectors = np.linalg.eigh(matrix)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0, None))) @ eigenvectors.T


def frechet_distance(features_a, features_b):
    """The Frechet distance between Gaussians fitted to two feature sets.

    ``||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))`` in float64,
    with sample means and covariances (``np.cov``) of ``(n, dims)`` arrays.
    Without scipy: ``Tr((S_a S_b)^(1/2))`` is the sum of the square roots of
    the eigenvalues of ``S_a^(1/2) S_b S_a^(1/2)`` (which has the same
    eigenvalues as S_a S_b, but is symmetric PSD), clipped to >= 0.
    """
    a = _features(features_a, "features_a")
    b = _features(features_b, "features_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"The feature sets must have the same dimension; got {a.shape[1]} and {b.shape[1]}."
        )
    mean_a, mean_b = a.mean(axis=0), b.mean(axis=0)
    cov_a = np.atleast_2d(np.cov(a, rowvar=False))
    cov_b = np.atleast_2d(np.cov(b, rowvar=False))
    root_a = _psd_sqrt(cov_a)
    product = root_a @ cov_b @ root_a
    product = (product + product.T) / 2  # symmetric up to rounding; make it exact
    trace_root = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh(product), 0, None)))
    distance = np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_root
    return float(max(distance, 0.0))  # >= 0 in exact arithmetic


def _poses(classifier, images, batch_size, verbose=0, what="images"):
    """``classifier.predict(images)["poses"]``: float32 ``(n, classes, dims)``."""
    images = checks.check_image_array(images)
    batch_size = checks.check_count("batch_size", batch_size)
    if verbose:
        print(f"{_name(classifier)}: features of {len(images):,} {what}", flush=True)
    outputs = classifier.predict(images, batch_size=batch_size, verbose=verbose)
    if not isinstance(outputs, dict) or "poses" not in outputs:
        raise TypeError(
            f"{_name(classifier)}.predict() must return a dict with 'poses' (a capsule "
            f"classifier such as caps_zoo.load('capsnet')); got {type(outputs).__name__}."
        )
    poses = np.asarray(outputs["poses"], dtype=np.float32)
    if poses.ndim != 3:
        raise ValueError(
            f"{_name(classifier)}.predict()['poses'] should be (n, classes, capsule_dim); got "
            f"shape {poses.shape}."
        )
    return poses


def classifier_features(classifier, images, batch_size=DEFAULT_BATCH_SIZE, verbose=0):
    """A capsule classifier's class-capsule poses, flattened: float32
    ``(n, num_classes * capsule_dim)`` ((n, 160) for ``capsnet``), from
    ``classifier.predict(images)["poses"]``."""
    poses = _poses(classifier, images, batch_size, verbose)
    return poses.reshape(len(poses), -1)


def frechet_classifier_distance(
    real_images, generated_images, classifier="capsnet", weights="mnist",
    batch_size=DEFAULT_BATCH_SIZE, verbose=1,
):
    """The Frechet distance between real and generated images, on the
    flattened class-capsule poses of a capsule classifier (not Inception:
    this is not the FID and not comparable with it).

    ``classifier``: a zoo model name, loaded with ``weights`` (a pretrained
    tag or a path; the registry says which tags exist), or a loaded model
    (then ``weights`` is ignored). Returns ``{"frechet_distance",
    "feature_classifier" (what was measured with), "n_real",
    "n_generated"}``. ``verbose``: progress bars (0: none).
    """
    real_images = checks.check_image_array(real_images, "real_images")
    generated_images = checks.check_image_array(generated_images, "generated_images")
    if isinstance(classifier, str):
        from caps_zoo import registry

        model = registry.load(classifier, weights=weights)
        source = f"{classifier}, weights {weights!r}"
    else:
        model = classifier
        source = f"{_name(model)} (a model object as given)"
    real = _poses(model, real_images, batch_size, verbose, "real images")
    generated = _poses(model, generated_images, batch_size, verbose, "generated images")
    classes, dims = real.shape[1:]
    distance = frechet_distance(real.reshape(len(real), -1), generated.reshape(len(generated), -1))
    return {
        "frechet_distance": distance,
        "feature_classifier": (
            f"{source}, {classes * dims}-d class-capsule poses ({classes} capsules x {dims})"
        ),
        "n_real": len(real),
        "n_generated": len(generated),
    }


def sample_frechet_distance(
    generator, dataset="mnist", n_samples=10000, seed=0, classifier="capsnet", weights=None,
    batch_size=DEFAULT_BATCH_SIZE, verbose=1,
):
    """``frechet_classifier_distance`` of ``n_samples`` of ``generator`` against
    the whole test split of ``dataset`` (grey levels in [0, 1]), on the
    features of ``classifier`` pretrained on that dataset (``weights``,
    default the tag named like the dataset): one number for the zoo's GANs
    and VAEs alike (DRAW's and DCRW's samples are their Bernoulli means).
    Adds ``dataset`` and ``seed`` to the result. ``verbose``: progress bars
    (0: none).
    """
    from caps_zoo import data

    real_images = data.load_images(dataset, "test")
    generated = draw_samples(generator, n_samples, seed=seed, batch_size=batch_size, verbose=verbose)
    result = frechet_classifier_distance(real_images, generated, classifier, weights=weights or dataset,
                                         batch_size=batch_size, verbose=verbose)
    return {**result, "dataset": f"{dataset} test split", "seed": seed}


def sample_frechet_report(generator, dataset="mnist", n_samples=10000, seed=0, verbose=1):
    """``sample_frechet_distance``, or ``{"frechet_distance": None, "skipped":
    reason}`` where no classifier pretrained on ``dataset`` ships (what run
    records and shipped metadata store)."""
    try:
        return sample_frechet_distance(generator, dataset, n_samples, seed=seed, verbose=verbose)
    except ValueError as error:  # the registry: no such pretrained tag
        return {"frechet_distance": None, "skipped": str(error)}


# -- nearest training neighbours ------------------------------------------------------


def _flat(images, what):
    images = np.asarray(images)
    if images.ndim < 2 or len(images) == 0:
        raise ValueError(f"{what}: expected a non-empty batch of images; got shape {images.shape}.")
    if not np.issubdtype(images.dtype, np.floating):
        raise TypeError(
            f"{what}: expected float images with values in [0, 1]; got dtype {images.dtype}. "
            "Convert with images.astype('float32') / 255."
        )
    checks.check_image_values(images, checks.UNIT, what)
    return images.reshape(len(images), -1)


def nearest_neighbours(samples, train_images, k=3, batch_size=256):
    """The ``k`` training images nearest to each sample in Euclidean pixel
    distance (Im et al.'s Fig. 24: are samples copies of training images?).

    Returns ``(indices int64 (n, k), distances float64 (n, k))``, nearest
    first. Candidates come from chunked float32 matrix products
    (``|s|^2 - 2 s.t + |t|^2``, ``batch_size`` samples at a time); the best
    ``k + 8`` of them are then measured exactly in float64, so an exact copy
    is at distance 0 and the order is exact (unless more than 8 images tie
    within float32 rounding).
    """
    samples = _flat(samples, "samples")
    train = _flat(train_images, "train_images")
    if samples.shape[1] != train.shape[1]:
        raise ValueError(
            f"samples and train_images must have the same image size; got {samples.shape[1]} "
            f"and {train.shape[1]} values per image."
        )
    k = checks.check_count("k", k)
    if k > len(train):
        raise ValueError(f"k must be at most the number of training images ({len(train)}); got {k}.")
    batch_size = checks.check_count("batch_size", batch_size)
    candidates = min(len(train), k + 8)

    train32 = train.astype(np.float32, copy=False)
    train_norms = np.einsum("ij,ij->i", train32, train32)
    indices = np.empty((len(samples), k), dtype=np.int64)
    distances = np.empty((len(samples), k), dtype=np.float64)
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        chunk32 = chunk.astype(np.float32, copy=False)
        squared = train_norms[None, :] - 2 * (chunk32 @ train32.T)  # + |s|^2: same per row
        nearest = np.argpartition(squared, candidates - 1, axis=1)[:, :candidates]
        exact = np.linalg.norm(
            chunk[:, None, :].astype(np.float64) - train[nearest].astype(np.float64), axis=-1
        )
        order = np.argsort(exact, axis=1, kind="stable")[:, :k]
        indices[start : start + len(chunk)] = np.take_along_axis(nearest, order, axis=1)
        distances[start : start + len(chunk)] = np.take_along_axis(exact, order, axis=1)
    return indices, distances
