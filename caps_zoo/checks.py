"""The checks of what users give the zoo: one wording everywhere.

Every entry point (the models' calls and steps, ``fit``/``evaluate``/
``predict``, the metrics, the plots, the serving exports) checks its inputs
with these, so that a wrong input is refused with what was expected and what
came, instead of being computed on: float images in [0, 255] trained the
capsule networks to a loss of 2e3, NaN pixels became confident scores
(oneDNN's ReLU maps NaN to 0), labels of 10 became all-zero one-hots.

Two kinds of check, for two kinds of input:

- ``check_image_array`` / ``check_image_values``: concrete arrays (numpy, or
  eager tensors): rank, shape, dtype, non-empty, finite, range.
- ``assert_image_values`` / ``assert_finite`` / ``assert_class_ids``:
  tensors inside a traced step (``train_step``, ``test_step``,
  ``predict_step``) or a served signature: in-graph assertions that raise
  ``InvalidArgumentError`` with the same wording when the batch runs (a few
  elementwise passes and reductions over the batch). XLA compiles
  ``Assert`` to nothing: under ``jit_compile=True`` (Keras' "auto" picks it
  on GPUs) the steps check nothing, and only the Python checks of concrete
  inputs hold.

Image values are "[0, 1]" (intensities) or "{0, 1}" (binarized: the
Bernoulli likelihoods of DRAW, DCRW and RCN are bounds only on binary
images).
"""

import numbers

import keras
import numpy as np
import tensorflow as tf

UNIT = "[0, 1]"
BINARY = "{0, 1}"
DTYPE_HINT = {UNIT: "Convert with images.astype('float32') / 255.",
              BINARY: "Use caps_zoo.data.load(..., binarize='stochastic' or 'fixed')."}


def is_integer(value):
    """Whether ``value`` is an integer (numpy's too), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value):
    """Whether ``value`` is a real number (numpy's too), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def describe_shape(shape):
    """``(batch, 28, 28, 1)`` for ``[None, 28, 28, 1]``."""
    return "(" + ", ".join("batch" if size is None else str(size) for size in shape) + ")"


def shape_matches(shape, expected):
    """Whether a (possibly partly known) ``shape`` can be ``expected``
    (``None`` in either: any size): False for a known mismatch."""
    if shape.rank is None:
        return True
    return shape.rank == len(expected) and all(
        size is None or want is None or size == want for size, want in zip(shape.as_list(), expected))


def assert_shape(tensor, expected, message):
    """``tensor`` with the static shape ``expected`` (``None``: any size),
    after an in-graph check of its run-time shape where the traced shape does
    not settle it. ``message`` leads the error, which adds the shape that
    came (``InvalidArgumentError`` when the batch runs).

    Why in the graph: Keras' ``predict`` retraces with relaxed shapes, so the
    second call of a model may see a batch of unknown rank at trace time; a
    Python check of the static shape then raised "Cannot take the length of
    shape with unknown rank" for the same bad batch that a fresh model
    refused clearly. A served signature declares unknown rank on purpose.
    """
    if not isinstance(tensor, keras.KerasTensor):  # symbolic: its shape is all there is
        tensor = tf.convert_to_tensor(tensor)
    static = tf.TensorShape(tensor.shape)
    if not shape_matches(static, expected):
        raise ValueError(f"{message}; got shape {tuple(static.as_list())}.")
    if isinstance(tensor, keras.KerasTensor) or static.rank is not None and all(
            want is None or size is not None for size, want in zip(static.as_list(), expected)):
        return tensor  # the traced shape settles it
    wanted = [-1 if size is None else size for size in expected]
    shape = tf.shape(tensor, out_type=tf.int32)
    matches = tf.cond(
        tf.equal(tf.size(shape), len(wanted)),
        lambda: tf.reduce_all((tf.reshape(shape, [len(wanted)]) == wanted) | (tf.constant(wanted) < 0)),
        lambda: tf.constant(False),
    )

    def refuse():
        check = tf.debugging.Assert(matches, [f"{message}; got shape", shape], summarize=8)
        with tf.control_dependencies([check]):
            return tf.zeros([0 if size is None else size for size in expected], tensor.dtype)

    def accept():
        # A reshape to the shape it has, not tf.ensure_shape: grappler takes
        # an EnsureShape as a fact about its input and folded tf.shape(x)
        # above to the expected shape, so that the check always passed.
        checked = tf.reshape(tensor, shape)
        checked.set_shape(expected)
        return checked

    # The batch flows through the check (a cond), not beside it.
    return tf.cond(matches, accept, refuse)


def check_count(name, value):
    """``int(value)``, or a clear ValueError unless it is an integer >= 1
    (``sample(0)`` returned a scalar, ``steps=-1`` an internal error)."""
    if (isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating))
            or not float(value).is_integer() or int(value) < 1):
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")
    return int(value)


def is_concrete(value):
    """Whether ``value`` holds numbers now (numpy, eager), not a traced or
    symbolic tensor: only then can its values be checked in Python."""
    if isinstance(value, keras.KerasTensor):
        return False
    return (not tf.is_tensor(value)) or (hasattr(value, "numpy") and tf.executing_eagerly())


def _scale_hint(high):
    return " (scaled to [0, 255]? divide by 255)" if high > 1.5 else ""


def values_error(array, allowed, what):
    """The ValueError for an array whose values are not finite and within
    ``allowed`` (``UNIT`` or ``BINARY``), or None."""
    if array.size == 0:
        return None
    if not np.all(np.isfinite(array)):
        return ValueError(f"{what} must hold finite values in {allowed}; got NaN or inf "
                          f"(at {int(np.sum(~np.isfinite(array)))} of {array.size} values).")
    low, high = float(np.min(array)), float(np.max(array))
    if low < 0 or high > 1:
        return ValueError(f"{what} must hold values in {allowed}; got min {low:g}, max {high:g}{_scale_hint(high)}.")
    if allowed == BINARY and not np.all((array == 0) | (array == 1)):
        return ValueError(
            f"{what} must hold values in {{0, 1}} (binarized: the Bernoulli likelihood is a bound "
            "only on binary images); got grey values. " + DTYPE_HINT[BINARY])
    return None


def check_image_values(images, allowed=UNIT, what="images"):
    """Raise if concrete ``images`` are not finite and within ``allowed``."""
    if is_concrete(images):
        error = values_error(np.asarray(images, dtype=np.float32), allowed, what)
        if error is not None:
            raise error


def check_image_array(images, what="images", shape=None, allowed=UNIT):
    """``images`` as a float numpy array, or a clear error unless they are a
    non-empty batch ``(n, height, width, channels)`` (of ``shape`` if given),
    float, finite, with values in ``allowed``."""
    images = np.asarray(images)
    expected = f"(n, {', '.join(map(str, shape))})" if shape else "(n, height, width, channels), e.g. (n, 28, 28, 1)"
    if images.ndim != 4 or (shape and tuple(images.shape[1:]) != tuple(shape)):
        raise ValueError(f"{what}: expected a batch of images {expected}; got shape {images.shape}.")
    if not np.issubdtype(images.dtype, np.floating):
        raise TypeError(f"{what}: expected float images with values in {allowed}; got dtype {images.dtype}. "
                        + DTYPE_HINT[allowed])
    if len(images) == 0:
        raise ValueError(f"{what}: expected at least one image; got none.")
    check_image_values(images, allowed, what)
    return images


def check_finite(values, what):
    """Raise unless concrete ``values`` hold no NaN or inf."""
    if is_concrete(values) and not np.all(np.isfinite(np.asarray(values, dtype=np.float32))):
        raise ValueError(f"{what} must hold finite values; got NaN or inf.")


def assert_finite(tensor, what):
    """``tensor`` after an in-graph check that it holds no NaN or inf."""
    tensor = tf.convert_to_tensor(tensor)
    check = tf.debugging.Assert(tf.reduce_all(tf.math.is_finite(tf.cast(tensor, tf.float32))),
                                [f"{what} must hold finite values; got NaN or inf"])
    with tf.control_dependencies([check]):
        return tf.identity(tensor)


def assert_image_values(images, allowed=UNIT, what="images"):
    """``images`` after in-graph checks: finite, within ``allowed``. One
    failed check reports (NaN is left to the finite check, whatever the
    order the runtime runs them in)."""
    images = tf.convert_to_tensor(images)
    floats = tf.cast(images, tf.float32)
    finite = tf.math.is_finite(floats)
    # NaN and inf taken as 0 here: the range below is the finite values'.
    safe = tf.where(finite, floats, tf.zeros_like(floats))
    low, high = tf.reduce_min(safe), tf.reduce_max(safe)
    hint = tf.where(high > 1.5, _scale_hint(2.0), "")
    checks = [
        tf.debugging.Assert(tf.reduce_all(finite), [f"{what} must hold finite values in {allowed}; got NaN or inf"]),
        tf.debugging.Assert((low >= 0) & (high <= 1), [
            f"{what} must hold values in {allowed}; got min", low, "max", high, hint]),
    ]
    if allowed == BINARY:
        checks.append(tf.debugging.Assert(tf.reduce_all((safe == 0) | (safe == 1)), [
            f"{what} must hold values in {{0, 1}} (binarized: the Bernoulli likelihood is a bound only on "
            "binary images); got grey values. " + DTYPE_HINT[BINARY]]))
    with tf.control_dependencies(checks):
        return tf.identity(images)


def assert_class_ids(labels, num_classes, what="labels"):
    """``labels`` after in-graph checks: class ids (integers, or floats
    holding integers) in [0, num_classes), or one-hot targets with entries in
    [0, 1]. A label of 10 or -1 became an all-zero target; 3.7 became 3."""
    labels = tf.convert_to_tensor(labels)
    if labels.dtype == tf.bool or labels.dtype == tf.string:
        raise TypeError(f"{what} must be class ids or one-hot targets; got dtype {labels.dtype.name}.")
    if labels.shape.rank == 2 and labels.shape[-1] == num_classes and num_classes != 1:
        floats = tf.cast(labels, tf.float32)
        check = tf.debugging.Assert(tf.reduce_all((floats >= 0) & (floats <= 1)), [
            f"{what}: one-hot targets must hold values in [0, 1]; got min", tf.reduce_min(floats),
            "max", tf.reduce_max(floats)])
    else:
        floats = tf.cast(labels, tf.float64)
        integral = tf.reduce_all(tf.equal(floats, tf.round(floats)))
        inside = tf.reduce_all((floats >= 0) & (floats < num_classes))
        check = tf.debugging.Assert(integral & inside, [
            f"{what} must be class ids, integers in [0, {num_classes - 1}]; got min", tf.reduce_min(floats),
            "max", tf.reduce_max(floats), "all integers:", integral])
    with tf.control_dependencies([check]):
        return tf.identity(labels)
