"""caps_zoo.plots: pose perturbations (Sabour et al. Fig. 4) and reconstruction grids,
on the shipped pretrained capsnet and real MNIST test images."""

import numpy as np
import pytest

import caps_zoo
from caps_zoo import plots

DELTAS = np.linspace(-0.25, 0.25, 11)
ZERO = int(np.flatnonzero(DELTAS == 0)[0])


@pytest.fixture(scope="module")
def model(pretrained_capsnet):
    return pretrained_capsnet


@pytest.fixture(scope="module")
def mnist(mnist_sample):
    return mnist_sample[0][:16], mnist_sample[1][:16]


def test_delta_zero_is_the_plain_reconstruction(model, mnist):
    images, labels = mnist
    grid = plots.perturbed_reconstructions(model, images[0], deltas=DELTAS)
    assert grid.shape == (16, len(DELTAS), 28, 28)
    assert grid.dtype == np.float32
    # label=None decodes the predicted class, as model(images) does.
    expected = np.asarray(model(images[:1])["reconstruction"])[0, ..., 0]
    for row in grid[:, ZERO]:
        np.testing.assert_allclose(row, expected, atol=1e-5, rtol=0)


def test_given_label_decodes_that_capsule(model, mnist):
    images, labels = mnist
    label = (int(labels[0]) + 1) % 10  # not the true (nor, here, the predicted) class
    grid = plots.perturbed_reconstructions(model, images[0], label=label, dims=[2, 7], deltas=[0.0, 0.1])
    assert grid.shape == (2, 2, 28, 28)
    poses = model.encode(images[:1])
    expected = np.asarray(model.decode(poses, labels=np.array([label])))[0, ..., 0]
    np.testing.assert_allclose(grid[0, 0], expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(grid[1, 0], expected, atol=1e-5, rtol=0)
    plain = np.asarray(model(images[:1])["reconstruction"])[0, ..., 0]
    assert np.abs(expected - plain).max() > 0.05  # another capsule draws another digit


def test_different_deltas_give_different_images(model, mnist):
    images, _ = mnist
    # A 2-D image without the channel axis works too.
    grid = plots.perturbed_reconstructions(model, images[1][..., 0], deltas=DELTAS)
    for row in grid:  # every dimension changes the drawing ...
        assert np.abs(row[0] - row[-1]).max() > 1e-3
        for a, b in zip(row[:-1], row[1:]):  # ... at every step of 0.05
            assert not np.array_equal(a, b)
    # ... and differently: the rows at the largest delta are not all the same.
    assert np.abs(grid[:, -1] - grid[0, -1]).max() > 1e-2


def test_bad_arguments_are_rejected(model, mnist):
    images, _ = mnist
    with pytest.raises(ValueError, match="dims"):
        plots.perturbed_reconstructions(model, images[0], dims=[16])
    with pytest.raises(ValueError, match="label"):
        plots.perturbed_reconstructions(model, images[0], label=10)
    with pytest.raises(ValueError, match="shape"):
        plots.perturbed_reconstructions(model, images[:2])


def test_pose_perturbation_grid_writes_png(model, mnist, tmp_path):
    import matplotlib.pyplot as plt

    images, _ = mnist
    path = tmp_path / "perturbations.png"
    figure = plots.pose_perturbation_grid(model, images[0], path=path)
    try:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert path.stat().st_size > 10_000
        assert "class" in figure.axes[0].get_title()
        assert len(figure.axes[0].get_xticklabels()) == 11
        assert len(figure.axes[0].get_yticklabels()) == 16
    finally:
        plt.close(figure)
    # Without a path: a figure, no file.
    figure = plots.pose_perturbation_grid(model, images[0], dims=[0, 1], deltas=[-0.1, 0.1])
    plt.close(figure)
    assert [p.name for p in tmp_path.iterdir()] == ["perturbations.png"]


def test_reconstruction_grid_writes_png(model, mnist, tmp_path):
    images, labels = mnist
    outputs = model.predict(images, verbose=0)
    predictions = np.argmax(outputs["scores"], axis=-1)
    path = tmp_path / "reconstructions.png"
    returned = plots.reconstruction_grid(images, outputs["reconstruction"], labels, predictions, path)
    assert returned == path
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 10_000


def test_demo_uses_the_moved_function():
    from caps_zoo import demo

    assert demo.reconstruction_grid is plots.reconstruction_grid


# -- drawings of the recurrent writers ------------------------------------------


@pytest.fixture(scope="module")
def drawn():
    import keras

    keras.utils.set_random_seed(0)
    return caps_zoo.create_model("draw", steps=4).sample(3, seed=1)


def test_drawing_strip_writes_a_png(drawn, tmp_path):
    path = plots.drawing_strip(drawn, tmp_path / "strip.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    figure = plots.drawing_strip(drawn)
    assert len(figure.axes) == 3 * 4  # one row per sample, one column per step
    assert len(figure.axes[0].patches) == 1  # the write box


def test_drawing_gif_has_one_frame_per_step_with_the_box(drawn, tmp_path):
    from PIL import Image

    frames = plots.drawing_frames(drawn, scale=2)
    assert len(frames) == 4 and frames[0].dtype == np.uint8
    red = np.all(frames[-1] == plots.BOX_COLOUR, axis=-1)
    assert red.any()  # the write window is drawn
    path = plots.drawing_gif(drawn, tmp_path / "drawing.gif", scale=2)
    with Image.open(path) as gif:
        assert gif.n_frames == 4


def test_drawing_without_write_attention_has_no_boxes(tmp_path):
    model = caps_zoo.create_model("draw", steps=2, read_attention=False, write_attention=False)
    drawn = model.sample(2)
    assert drawn["write_boxes"] is None
    frames = plots.drawing_frames(drawn)
    assert not np.all(frames[-1] == plots.BOX_COLOUR, axis=-1).any()
    assert plots.drawing_strip(drawn, tmp_path / "strip.png").is_file()


def test_drawing_rejects_other_input():
    with pytest.raises(ValueError, match=r"a model.s sample\(\) \(RecurrentWriter, GRAN\)"):
        plots.drawing_strip({"canvases": np.zeros((28, 28))})


# -- sample grids and nearest training neighbours ------------------------------------


def test_image_grid_writes_a_png_and_returns_a_figure(mnist, tmp_path):
    from matplotlib.figure import Figure

    images, _ = mnist
    path = tmp_path / "samples.png"
    assert plots.image_grid(images, path, columns=8, title="epoch 3") == path
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 5_000
    nested = tmp_path / "docs" / "figures" / "samples.png"  # folders made, as on a fresh clone
    assert plots.image_grid(images[:4], nested) == nested and nested.is_file()
    figure = plots.image_grid(images[:13, ..., 0], columns=5)  # without the channel axis
    assert isinstance(figure, Figure)
    mosaic = figure.axes[0].images[0].get_array()
    assert mosaic.shape == (3 * 30 - 2, 5 * 30 - 2)  # 3 rows of 5 tiles, 2-pixel gaps
    np.testing.assert_array_equal(mosaic[:28, :28], images[0, ..., 0])
    with pytest.raises(ValueError, match="grey images"):
        plots.image_grid(np.zeros((4, 28, 28, 3), np.float32))


def test_nearest_neighbour_grid_writes_a_png_and_returns_a_figure(mnist, tmp_path):
    from matplotlib.figure import Figure

    from caps_zoo import metrics

    images, _ = mnist
    train = images[4:]
    samples = np.concatenate([train[[3]], images[:2]])  # a copy of a training image, two others
    indices, distances = metrics.nearest_neighbours(samples, train, k=3)
    path = tmp_path / "neighbours.png"
    assert plots.nearest_neighbour_grid(samples, train, indices, distances, path) == path
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 5_000
    figure = plots.nearest_neighbour_grid(samples, train, indices, distances)
    assert isinstance(figure, Figure)
    assert len(figure.axes) == 3 * 4  # each row: the sample and its 3 neighbours
    assert [axis.get_title() for axis in figure.axes[:4]] == (
        ["sample", "d=0.00"] + [f"d={d:.2f}" for d in distances[0, 1:]]
    )
    np.testing.assert_array_equal(figure.axes[1].images[0].get_array(), train[3, ..., 0])
    with pytest.raises(ValueError, match=r"\(n, k\)"):
        plots.nearest_neighbour_grid(samples, train, indices[:2], distances[:2])
    with pytest.raises(ValueError, match="rows of train_images"):
        plots.nearest_neighbour_grid(samples, train, indices + len(train), distances)


def test_a_long_title_is_wrapped_inside_a_small_figure():
    """The routing grid's heat maps (4.6 inches wide) cut their title at both edges."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(4.6, 4.0))
    axis.imshow(np.zeros((4, 4)))
    title = "deep_capsnet validation accuracy (%), 2 epochs of 10,000 images, seed 0"
    plots.finish_figure(figure, title, path=None)
    figure.canvas.draw()
    extent = figure._suptitle.get_window_extent()
    assert 0 <= extent.x0 and extent.x1 <= figure.bbox.width
    assert figure._suptitle.get_text().replace("\n", " ") == title
    plt.close(figure)
