"""The CV-VAE family's figures: code cells line up with the padded map, and
the figures draw, save and refuse bad inputs."""

import numpy as np
import pytest

from caps_zoo import code_map_figures, data


def test_code_cells_tile_the_padded_image_and_crop_to_it():
    codes = np.arange(64, dtype=np.int32).reshape(1, 8, 8)
    cells = code_map_figures.code_cells(codes, (28, 28), 32)
    assert cells.shape == (1, 28, 28)
    # Pixel (0, 0) of the image is pixel (2, 2) of the padded one: cell (0, 0);
    # pixel (2, 2) is padded (4, 4): cell (1, 1); the last pixel is cell (7, 7).
    assert cells[0, 0, 0] == 0 and cells[0, 1, 1] == 0 and cells[0, 2, 2] == 9 and cells[0, 27, 27] == 63
    assert (np.unique(cells[0, :2, :2]) == [0]).all()
    with pytest.raises(ValueError, match="does not tile"):
        code_map_figures.code_cells(codes, (28, 28), 30)
    with pytest.raises(TypeError, match="integer code ids"):
        code_map_figures.code_cells(codes.astype("float32"), (28, 28), 32)


def test_figures_save_and_refuse_bad_inputs(tmp_path):
    images, _ = data.load_arrays("mnist_sample", "test")
    images = data.as_float_images(images[:6])
    codes = np.random.default_rng(0).integers(0, 16, (6, 8, 8)).astype("int32")
    path = code_map_figures.code_map_overlay(images, codes, 16, path=tmp_path / "codes.png", columns=3)
    assert path.stat().st_size > 3000
    pairs = code_map_figures.reconstruction_pairs(images, images[::-1], tmp_path / "pairs.png")
    assert pairs.stat().st_size > 3000
    with pytest.raises(ValueError, match="codes must lie in"):
        code_map_figures.code_map_overlay(images, codes + 16, 16)
    with pytest.raises(ValueError, match="one code map per image"):
        code_map_figures.code_map_overlay(images, codes[:3], 16)
    with pytest.raises(ValueError, match="same shape"):
        code_map_figures.reconstruction_pairs(images, images[:3])


def test_reconstructions_by_model_draws_a_row_per_model_and_refuses_bad_inputs(tmp_path):
    images, _ = data.load_arrays("mnist_sample", "test")
    images = data.as_float_images(images[:5])
    path = code_map_figures.reconstructions_by_model(
        images, {"a": images[::-1], "b": 1 - images}, tmp_path / "rows.png")
    assert path.stat().st_size > 3000
    figure = code_map_figures.reconstructions_by_model(images, {"a": images})
    labels = [axis.get_ylabel() for axis in figure.axes if axis.get_ylabel()]
    assert labels == ["input", "a"] and len(figure.axes) == 2 * 5
    with pytest.raises(ValueError, match="at least one model"):
        code_map_figures.reconstructions_by_model(images, {})
    with pytest.raises(ValueError, match="reconstructions of b: expected the images' shape"):
        code_map_figures.reconstructions_by_model(images, {"a": images, "b": images[:2]})
