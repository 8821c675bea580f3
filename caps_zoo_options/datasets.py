"""What a config or a command line may name of the data, without TensorFlow.

The dataset names, splits, binarizations and the size of the validation
split that ``caps_zoo.data`` takes (and re-exports: ``caps_zoo.data.DATASETS``
is this module's), defined here so that ``caps_zoo_options.training`` and the
recipes' argument parsers can use them without importing TensorFlow
(issue 15). What they mean: ``caps_zoo.data``'s docstring.
"""

DATASETS = ("mnist", "fashion_mnist", "cifar10", "mnist_sample")
GENERATED_DATASETS = ("multi_mnist",)  # pipelines only (load, num_examples): no arrays
SPLITS = ("train", "validation", "test")
VALIDATION_SIZE = 5000  # the last 5,000 training images; MNIST keeps 55,000 to train on
BINARIZATIONS = ("stochastic", "fixed", "threshold")


def check_binarize(binarize):
    """Raise ``ValueError`` unless ``binarize`` is None or one of ``BINARIZATIONS``."""
    if binarize not in (None,) + BINARIZATIONS:
        raise ValueError(f"binarize must be None or one of {BINARIZATIONS}, got {binarize!r}.")
