"""Figures of the zoo's models: capsule reconstructions, and drawings of the
recurrent writers (matplotlib and Pillow).

    from caps_zoo import plots

    plots.reconstruction_grid(images, reconstructions, labels, predictions, "recon.png")
    figure = plots.pose_perturbation_grid(model, image, path="perturbations.png")

``pose_perturbation_grid`` is Fig. 4 of Sabour et al. (2017): one pose
dimension of an image's class capsule at a time is shifted by each of a
range of small deltas and the decoder redraws the digit, showing what each
dimension has learnt to encode (stroke width, skew, scale, ...).
``perturbed_reconstructions`` is its computational part (numpy, no plotting).

``drawing_strip`` and ``drawing_gif`` show how DRAW and DCRW draw: the canvas
``sigmoid(c_t)`` after each step, with the patch written at that step drawn
as a red box (as in the DRAW paper's figures). Both take the dict that
``RecurrentWriter.sample`` returns.

    drawn = caps_zoo.load("draw").sample(8)
    plots.drawing_strip(drawn, "draw_strip.png")
    plots.drawing_gif(drawn, "draw.gif")

Figures are ``matplotlib.figure.Figure`` objects made without pyplot: no
backend or display is needed (servers), no global pyplot state is touched,
and Jupyter shows a returned figure inline.

``image_grid`` lays out generated samples (e.g. a GAN's, every epoch), and
``nearest_neighbour_grid`` puts each sample beside its nearest training
images (Im et al. 2016, Fig. 24: samples that are not copies); the
neighbours come from ``caps_zoo.metrics.nearest_neighbours``.

    indices, distances = metrics.nearest_neighbours(samples, x_train, k=3)
    plots.nearest_neighbour_grid(samples, x_train, indices, distances, "neighbours.png")
"""

import os
import textwrap

import numpy as np
from matplotlib.figure import Figure

from caps_zoo import checks

DEFAULT_DIMS = range(16)
DEFAULT_DELTAS = np.linspace(-0.25, 0.25, 11)  # Sabour et al.: steps of 0.05


def reconstruction_grid(images, reconstructions, labels, predictions, path=None, columns=8):
    """Pairs (input | reconstruction) with true and predicted labels.

    With ``path``: saves the PNG there, closes the figure and returns ``path``
    (what ``caps_zoo.demo`` uses). Without: returns the open figure (shown
    inline in a notebook).
    """
    rows = int(np.ceil(len(images) / columns))
    figure = Figure(figsize=(2 * columns * 0.9, rows * 1.3))
    axes = figure.subplots(rows, 2 * columns)
    axes = np.atleast_2d(axes)
    for axis in axes.flat:
        axis.axis("off")
    for index, (image, recon, label, predicted) in enumerate(
        zip(images, reconstructions, labels, predictions)
    ):
        row, column = divmod(index, columns)
        left, right = axes[row, 2 * column], axes[row, 2 * column + 1]
        left.imshow(image[..., 0], cmap="gray", vmin=0, vmax=1)
        right.imshow(recon[..., 0], cmap="magma", vmin=0, vmax=1)
        colour = "black" if label == predicted else "red"
        left.set_title(f"true {label}", fontsize=7)
        right.set_title(f"pred {predicted}", fontsize=7, color=colour)
    return finish_figure(figure, "inputs (gray) beside reconstructions from the predicted capsule", path)


def finish_figure(figure, title, path, dpi=120):
    """Title and lay out ``figure``; with ``path`` save it there and return
    ``path``, else return the figure (shown inline in a notebook)."""
    # Wrapped to the figure's width: a long title on a small figure (the
    # routing grid's 4x4 heat maps) ran off both edges.
    fontsize = 9
    characters = max(20, int(figure.get_figwidth() * 72 / (0.6 * fontsize)))
    figure.suptitle(textwrap.fill(title, characters), fontsize=fontsize)
    figure.tight_layout()
    if path is None:
        return figure
    # A figure's folder (docs/figures/...) may not exist on a fresh clone:
    # failing after minutes of model loading would lose the work.
    os.makedirs(os.path.dirname(os.path.abspath(os.fspath(path))), exist_ok=True)
    figure.savefig(path, dpi=dpi)
    return path


def _as_batch(model, image):
    """One image ``(h, w)`` or ``(h, w, c)`` as a batch of one, float32 if float."""
    image = np.asarray(image)
    if image.ndim == len(model.image_shape) - 1:
        image = image[..., None]
    if image.ndim == len(model.image_shape) + 1 and image.shape[0] == 1:
        image = image[0]
    if image.ndim != len(model.image_shape):
        raise ValueError(
            f"Expected one image of shape {model.image_shape} (or without the channel "
            f"axis); got shape {image.shape}."
        )
    if np.issubdtype(image.dtype, np.floating):
        image = image.astype("float32")
    return image[None]  # integer images reach the model, which says how to scale them


def class_capsule(model, image, label=None):
    """``(poses (num_classes, capsule_dim), label)`` of one image.

    ``label`` defaults to the predicted class (the longest capsule).
    """
    import keras

    poses = keras.ops.convert_to_numpy(model.encode(_as_batch(model, image)))[0]
    poses = poses.astype("float32")
    if label is None:
        label = int(np.argmax(np.sum(np.square(poses), axis=-1)))
    label = int(label)
    if not 0 <= label < poses.shape[0]:
        raise ValueError(f"label must be in [0, {poses.shape[0]}), got {label}.")
    return poses, label


def _decode_perturbations(model, poses, label, dims, deltas):
    import keras

    dims = np.asarray(list(dims), dtype=int)
    deltas = np.asarray(deltas, dtype="float32").reshape(-1)
    capsule_dim = poses.shape[-1]
    if dims.ndim != 1 or len(dims) == 0 or np.any((dims < 0) | (dims >= capsule_dim)):
        raise ValueError(f"dims must be a non-empty list of indices in [0, {capsule_dim}).")
    if len(deltas) == 0:
        raise ValueError("deltas must not be empty.")
    # (dims, deltas, classes, capsule_dim): the class capsule with delta added
    # to one dimension per row; then one decode call for the whole grid.
    grid = np.broadcast_to(poses, (len(dims), len(deltas)) + poses.shape).copy()
    rows, columns = np.arange(len(dims))[:, None], np.arange(len(deltas))[None, :]
    grid[rows, columns, label, dims[:, None]] += deltas[None, :]
    batch = grid.reshape((-1,) + poses.shape)
    labels = np.full((len(batch),), label, dtype="int32")
    images = keras.ops.convert_to_numpy(model.decode(batch, labels=labels))
    height, width = model.image_shape[:2]
    images = images.reshape(len(dims), len(deltas), height, width, -1)
    return images[..., 0] if images.shape[-1] == 1 else images


def perturbed_reconstructions(
    model, image, label=None, dims=DEFAULT_DIMS, deltas=DEFAULT_DELTAS
):
    """Decoded images ``(len(dims), len(deltas), height, width)`` for one image.

    Entry ``[i, j]`` is the decoder's image of the ``label`` capsule (default:
    the predicted class) with ``deltas[j]`` added to pose dimension
    ``dims[i]``; a delta of 0 gives the plain reconstruction. (Images with
    several channels keep a last channel axis.)
    """
    poses, label = class_capsule(model, image, label)
    return _decode_perturbations(model, poses, label, dims, deltas)


def pose_perturbation_grid(
    model, image, label=None, path=None, dims=DEFAULT_DIMS, deltas=DEFAULT_DELTAS
):
    """Sabour et al.'s Fig. 4 for one image: a ``dims`` x ``deltas`` grid.

    Rows are pose dimensions of the class capsule (``label``, default the
    predicted class), columns the delta added to that dimension. Returns the
    figure (a notebook shows it inline) and also saves it as a PNG to
    ``path`` if given.
    """
    dims = list(dims)
    deltas = np.asarray(deltas, dtype="float32").reshape(-1)
    poses, label = class_capsule(model, image, label)
    images = _decode_perturbations(model, poses, label, dims, deltas)

    rows, columns, height, width = images.shape[:4]
    gap = 2
    # One mosaic in one axes (fast to draw), white digits on black tiles,
    # separated by white gaps.
    mosaic = np.ones((rows * (height + gap) - gap, columns * (width + gap) - gap) + images.shape[4:])
    for row in range(rows):
        for column in range(columns):
            top, left = row * (height + gap), column * (width + gap)
            mosaic[top : top + height, left : left + width] = images[row, column]

    figure = Figure(figsize=(max(0.55 * columns + 1.2, 4.5), 0.55 * rows + 1.0))
    axis = figure.subplots()
    axis.imshow(np.clip(mosaic, 0, 1), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    axis.set_xticks([column * (width + gap) + width / 2 - 0.5 for column in range(columns)])
    axis.set_xticklabels([f"{delta:+.2f}" for delta in deltas], fontsize=7, rotation=90)
    axis.set_yticks([row * (height + gap) + height / 2 - 0.5 for row in range(rows)])
    axis.set_yticklabels([str(dim) for dim in dims], fontsize=7)
    axis.tick_params(length=0)
    for spine in axis.spines.values():
        spine.set_visible(False)
    axis.set_xlabel("delta added to the pose dimension", fontsize=8)
    axis.set_ylabel("pose dimension", fontsize=8)
    axis.set_title(f"class {label} capsule, one pose dimension perturbed at a time", fontsize=9)
    figure.tight_layout()
    if path is not None:
        figure.savefig(path, dpi=120)
    return figure


# -- drawings of the recurrent writers (DRAW, DCRW) ----------------------------

BOX_COLOUR = (230, 40, 40)


def _drawing_parts(drawn):
    canvases = np.asarray(drawn["canvases"], dtype=np.float32)
    if canvases.ndim != 5:
        raise ValueError(
            "expected the dict of a model's sample() (RecurrentWriter, GRAN): canvases (steps, n, "
            f"height, width, channels); got canvases of shape {canvases.shape}."
        )
    boxes = drawn.get("write_boxes")
    return canvases, None if boxes is None else np.asarray(boxes, dtype=np.float32)


def _step_indices(steps, columns):
    """``columns`` steps spread evenly from the first to the last."""
    if steps <= columns:
        return list(range(steps))
    return sorted(set(np.linspace(0, steps - 1, columns).round().astype(int).tolist()))


def drawing_strip(drawn, path=None, columns=10, max_rows=8):
    """One row per sample: the canvas at ``columns`` steps from first to last.

    Where the dict has ``write_boxes`` (DRAW, DCRW), a red box shows the
    patch written at that step. With ``path``: saves a
    PNG, returns ``path``; without, returns the figure.
    """
    from matplotlib.patches import Rectangle

    canvases, boxes = _drawing_parts(drawn)
    steps, count = canvases.shape[:2]
    rows = min(count, max_rows)
    picked = _step_indices(steps, columns)
    figure = Figure(figsize=(len(picked) * 1.0, rows * 1.05 + 0.4))
    axes = np.atleast_2d(figure.subplots(rows, len(picked), squeeze=False))
    for row in range(rows):
        for column, step in enumerate(picked):
            axis = axes[row, column]
            axis.imshow(canvases[step, row].squeeze(-1) if canvases.shape[-1] == 1
                        else canvases[step, row], cmap="gray", vmin=0, vmax=1)
            axis.set_xticks([])
            axis.set_yticks([])
            if boxes is not None:
                x0, y0, x1, y1 = boxes[step, row]
                axis.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False,
                                         edgecolor=np.array(BOX_COLOUR) / 255, linewidth=1))
            if row == 0:
                axis.set_title(f"t={step + 1}", fontsize=8)
    title = "canvas sigmoid(c_t) after step t" + ("; red: the patch written at t" if boxes is not None else "")
    return finish_figure(figure, title, path)


def drawing_frames(drawn, scale=4, columns=8, max_images=16):
    """The animation's frames as uint8 RGB arrays, one per step: a grid of
    canvases enlarged ``scale`` times, with each step's write box in red."""
    canvases, boxes = _drawing_parts(drawn)
    steps, count, height, width = canvases.shape[:4]
    count = min(count, max_images)
    columns = min(columns, count)
    rows = int(np.ceil(count / columns))
    gap = 2
    frames = []
    for step in range(steps):
        frame = np.full(((height * scale + gap) * rows, (width * scale + gap) * columns, 3), 64, np.uint8)
        for index in range(count):
            row, column = divmod(index, columns)
            tile = canvases[step, index]
            tile = np.repeat(tile, 3, axis=-1) if tile.shape[-1] == 1 else tile
            tile = (np.clip(tile, 0, 1) * 255).astype(np.uint8)
            tile = tile.repeat(scale, axis=0).repeat(scale, axis=1)
            top, left = row * (height * scale + gap), column * (width * scale + gap)
            if boxes is not None:
                _draw_box(tile, boxes[step, index] * scale + scale / 2)
            frame[top : top + height * scale, left : left + width * scale] = tile
        frames.append(frame)
    return frames


def _draw_box(tile, box):
    """A 1-pixel red rectangle on ``tile``, clipped to it."""
    height, width = tile.shape[:2]
    x0, y0, x1, y1 = np.round(box).astype(int)
    xs, ys = np.clip([x0, x1], 0, width - 1), np.clip([y0, y1], 0, height - 1)
    for y in (y0, y1):
        if 0 <= y < height:
            tile[y, xs[0] : xs[1] + 1] = BOX_COLOUR
    for x in (x0, x1):
        if 0 <= x < width:
            tile[ys[0] : ys[1] + 1, x] = BOX_COLOUR


def drawing_gif(drawn, path, scale=4, columns=8, max_images=16, frame_ms=80, hold_ms=1500):
    """An animated GIF of the drawing: one frame per step, the last held
    ``hold_ms``. Returns ``path``."""
    from PIL import Image

    frames = [Image.fromarray(frame) for frame in drawing_frames(drawn, scale, columns, max_images)]
    durations = [frame_ms] * (len(frames) - 1) + [hold_ms]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=durations, loop=0)
    return path


# -- samples and their nearest training images -------------------------------------


def grey_images(images, what="images"):
    """``(n, height, width)`` float images from ``(n, h, w)`` or ``(n, h, w, 1)``."""
    images = np.asarray(images)
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.ndim != 3 or len(images) == 0:
        raise ValueError(
            f"{what}: expected grey images (n, height, width, 1) or (n, height, width); "
            f"got shape {images.shape}."
        )
    checks.check_image_values(images, checks.UNIT, what)
    return images.astype(np.float32)


def image_grid(images, path=None, columns=10, title=None):
    """Grey images in rows of ``columns`` (e.g. a generator's samples after
    an epoch), drawn as one mosaic. With ``path``: saves a PNG, returns
    ``path``; without, returns the figure."""
    images = grey_images(images)
    count, height, width = images.shape
    columns = max(1, min(int(columns), count))
    rows = int(np.ceil(count / columns))
    gap = 2
    # White digits on black tiles, white gaps; empty cells of the last row white.
    mosaic = np.ones((rows * (height + gap) - gap, columns * (width + gap) - gap), np.float32)
    for index, image in enumerate(images):
        row, column = divmod(index, columns)
        top, left = row * (height + gap), column * (width + gap)
        mosaic[top : top + height, left : left + width] = np.clip(image, 0, 1)
    figure = Figure(figsize=(0.6 * columns + 0.4, 0.6 * rows + (0.6 if title else 0.3)))
    axis = figure.subplots()
    axis.imshow(mosaic, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    axis.axis("off")
    return finish_figure(figure, title or "", path)


SAMPLE_COLOUR = "tab:red"


def nearest_neighbour_grid(samples, train_images, indices, distances, path=None):
    """One row per sample: the sample (red frame, titled "sample"), then its
    nearest training images ``train_images[indices[i]]``, each titled with
    its Euclidean pixel distance (Im et al.'s Fig. 24). ``indices`` and
    ``distances`` are ``(n, k)``, as ``metrics.nearest_neighbours`` returns.
    With ``path``: saves a PNG, returns ``path``; without, the figure."""
    samples = grey_images(samples, "samples")
    train_images = np.asarray(train_images)
    indices = np.asarray(indices)
    distances = np.asarray(distances)
    if indices.ndim != 2 or indices.shape != distances.shape or len(indices) != len(samples):
        raise ValueError(
            f"indices and distances must both be (n, k) with n = {len(samples)} samples; got "
            f"{indices.shape} and {distances.shape}."
        )
    if indices.size and (indices.min() < 0 or indices.max() >= len(train_images)):
        raise ValueError(
            f"indices must be in [0, {len(train_images)}) (rows of train_images); got "
            f"[{indices.min()}, {indices.max()}]."
        )
    neighbours = grey_images(train_images[indices.reshape(-1)], "train_images")
    rows, k = indices.shape
    neighbours = neighbours.reshape(rows, k, *neighbours.shape[1:])

    figure = Figure(figsize=(1.0 * (k + 1) + 0.2, 1.1 * rows + 0.5))
    axes = figure.subplots(rows, k + 1, squeeze=False)
    for row in range(rows):
        tiles = [samples[row]] + list(neighbours[row])
        for column, tile in enumerate(tiles):
            axis = axes[row, column]
            axis.imshow(np.clip(tile, 0, 1), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
            if column == 0:
                axis.set_title("sample", fontsize=7, color=SAMPLE_COLOUR)
                for spine in axis.spines.values():
                    spine.set_edgecolor(SAMPLE_COLOUR)
                    spine.set_linewidth(2)
            else:
                axis.set_title(f"d={distances[row, column - 1]:.2f}", fontsize=7)
    return finish_figure(figure, "samples beside their nearest training images (pixel distance d)", path)
