"""Figures of the CV-VAE family: inputs beside reconstructions, and the
code map of an image drawn over it (issue 12's figures).

    from caps_zoo import code_map_figures

    code_map_figures.reconstruction_pairs(images, model.reconstruct(images), "pairs.png")
    code_map_figures.reconstructions_by_model(images[:8], {"vq_vae": ..., "cv_vae": ...}, "rows.png")
    maps = model.encode_codes(images)["codes"]                   # (n, 8, 8)
    code_map_figures.code_map_overlay(images, maps, num_codes=16, path="codes.png")

The code map covers the padded image (32x32 for 28x28 digits): each code
is one cell of ``padded_size / map size`` pixels (4 here), and the overlay
crops it back to the image. One colour per code, the same in every panel,
so that a reader sees which parts of a digit share a code (for ``cv_vae``:
the parent capsule each position was routed to).
"""

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from caps_zoo.plots import finish_figure, grey_images


def reconstruction_pairs(images, reconstructions, path=None, columns=8, title=None):
    """Each input (grey) beside its reconstruction, ``columns`` pairs a
    row. Both ``(n, h, w, 1)`` in [0, 1]. With ``path``: saves a PNG and
    returns ``path``; without, returns the figure."""
    images = grey_images(images, "images")
    reconstructions = grey_images(reconstructions, "reconstructions")
    if images.shape != reconstructions.shape:
        raise ValueError(f"images and reconstructions must have the same shape; got {images.shape} and "
                         f"{reconstructions.shape}.")
    columns = max(1, min(int(columns), len(images)))
    rows = int(np.ceil(len(images) / columns))
    figure = Figure(figsize=(2 * columns * 0.7, rows * 0.8 + 0.4))
    axes = np.atleast_2d(figure.subplots(rows, 2 * columns, squeeze=False))
    for axis in axes.flat:
        axis.axis("off")
    for index, (image, reconstruction) in enumerate(zip(images, reconstructions)):
        row, column = divmod(index, columns)
        axes[row, 2 * column].imshow(image, cmap="gray", vmin=0, vmax=1)
        axes[row, 2 * column + 1].imshow(reconstruction, cmap="magma", vmin=0, vmax=1)
    return finish_figure(figure, title or "inputs (grey) beside reconstructions", path)


def reconstructions_by_model(images, reconstructions, path=None, title=None):
    """The same inputs (top row, grey) and, one row each, every model's
    reconstructions of them: ``reconstructions`` maps a row label (a model's
    name) to ``(n, h, w, 1)`` in [0, 1], in the rows' order. With ``path``:
    saves a PNG and returns ``path``; without, returns the figure."""
    images = grey_images(images, "images")
    if not reconstructions:
        raise ValueError("reconstructions: expected at least one model's reconstructions; got none.")
    rows = {label: grey_images(values, f"reconstructions of {label}") for label, values in reconstructions.items()}
    for label, values in rows.items():
        if values.shape != images.shape:
            raise ValueError(f"reconstructions of {label}: expected the images' shape {images.shape}; "
                             f"got {values.shape}.")
    labels = ["input", *rows]
    figure = Figure(figsize=(len(images) * 0.7 + 1.4, len(labels) * 0.75 + 0.4))
    axes = np.atleast_2d(figure.subplots(len(labels), len(images), squeeze=False))
    for row, (label, values) in enumerate(zip(labels, [images, *rows.values()])):
        for column, image in enumerate(values):
            axis = axes[row, column]
            axis.imshow(image, cmap="gray" if row == 0 else "magma", vmin=0, vmax=1)
            axis.set_xticks([])
            axis.set_yticks([])
            for spine in axis.spines.values():
                spine.set_visible(False)
        axes[row, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=7)
    return finish_figure(figure, title or "the same test inputs through each model", path)


def code_cells(codes, image_shape, padded_size):
    """The code map as an image-sized array of code ids: each code repeated
    over its cell of the padded image, then cropped to ``image_shape``
    ``(height, width)`` (centred, as the models pad)."""
    codes = np.asarray(codes)
    if codes.ndim != 3:
        raise ValueError(f"codes: expected code maps (n, height, width); got shape {codes.shape}.")
    if not np.issubdtype(codes.dtype, np.integer):
        raise TypeError(f"codes: expected integer code ids; got dtype {codes.dtype}.")
    height, width = image_shape
    cell_h, rest_h = divmod(padded_size, codes.shape[1])
    cell_w, rest_w = divmod(padded_size, codes.shape[2])
    if rest_h or rest_w or padded_size < max(height, width):
        raise ValueError(f"a {codes.shape[1]}x{codes.shape[2]} code map does not tile a {padded_size}x"
                         f"{padded_size} padded image of {height}x{width}.")
    cells = np.repeat(np.repeat(codes, cell_h, axis=1), cell_w, axis=2)
    top, left = (padded_size - height) // 2, (padded_size - width) // 2
    return cells[:, top:top + height, left:left + width]


def code_map_overlay(images, codes, num_codes, padded_size=32, path=None, columns=8, alpha=0.45,
                     title=None):
    """Each image with its code map drawn over it in one colour per code
    (module docstring), ``columns`` a row. ``codes``: integer ``(n, map_h,
    map_w)`` in [0, num_codes). With ``path``: saves a PNG and returns
    ``path``; without, returns the figure."""
    images = grey_images(images, "images")
    codes = np.asarray(codes)
    if len(codes) != len(images):
        raise ValueError(f"one code map per image: got {len(codes)} maps for {len(images)} images.")
    cells = code_cells(codes, images.shape[1:], padded_size)
    if cells.min() < 0 or cells.max() >= num_codes:
        raise ValueError(f"codes must lie in [0, {num_codes - 1}]; got min {cells.min()}, max {cells.max()}.")
    palette = colormaps["tab20"].resampled(max(num_codes, 2))(np.arange(num_codes))[:, :3]
    columns = max(1, min(int(columns), len(images)))
    rows = int(np.ceil(len(images) / columns))
    figure = Figure(figsize=(columns * 0.9, rows * 0.9 + 0.4))
    axes = np.atleast_2d(figure.subplots(rows, columns, squeeze=False))
    for axis in axes.flat:
        axis.axis("off")
    for index, (image, cell) in enumerate(zip(images, cells)):
        row, column = divmod(index, columns)
        blended = (1 - alpha) * image[..., None] + alpha * palette[cell]
        axes[row, column].imshow(np.clip(blended, 0, 1), interpolation="nearest")
    return finish_figure(figure, title or f"code per position ({num_codes} codes, one colour each)", path)
