"""Figures of a capsule network's reconstructions (matplotlib).

    from caps_zoo import plots

    plots.reconstruction_grid(images, reconstructions, labels, predictions, "recon.png")
    figure = plots.pose_perturbation_grid(model, image, path="perturbations.png")

``pose_perturbation_grid`` is Fig. 4 of Sabour et al. (2017): one pose
dimension of an image's class capsule at a time is shifted by each of a
range of small deltas and the decoder redraws the digit, showing what each
dimension has learnt to encode (stroke width, skew, scale, ...).
``perturbed_reconstructions`` is its computational part (numpy, no plotting).

Figures are ``matplotlib.figure.Figure`` objects made without pyplot: no
backend or display is needed (servers), no global pyplot state is touched,
and Jupyter shows a returned figure inline.
"""

import numpy as np
from matplotlib.figure import Figure

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
    figure.suptitle("inputs (gray) beside reconstructions from the predicted capsule", fontsize=9)
    figure.tight_layout()
    if path is None:
        return figure
    figure.savefig(path, dpi=120)
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
