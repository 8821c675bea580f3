"""Malformed requests to every signature of an exported SavedModel, in a
process of their own (``test_model_families.py`` runs this): an abort (a
failed oneDNN check exits with 134) shows as a crashed process, not as a
crashed test run.

    python tests/serving_client.py VERSION_DIR '{"classify": {"images": [null, 28, 28, 1]}}'

Prints one JSON object: for every signature and malformed request, the first
line of the error (or null if none came), and whether a good request still
worked afterwards.
"""

import json
import sys

import numpy as np
import tensorflow as tf


def good(shape, batch=2):
    # 1.0: an image value that is both an intensity and binary, and finite noise.
    return np.ones([batch if size is None else size for size in shape], np.float32)


def malformed(name, shape):
    """(label, array) pairs that the signature must refuse."""
    valid = good(shape)
    requests = [
        ("last axis missing", valid[..., 0]),
        ("extra leading axis", valid[None]),
        ("last axis one longer", np.concatenate([valid, valid[..., :1]], axis=-1)),
        ("int32", valid.astype(np.int32)),
        ("not finite", np.where(np.arange(valid.size).reshape(valid.shape) == 0, np.nan, valid).astype(np.float32)),
    ]
    if len(shape) > 2:
        requests.append(("second axis one shorter", valid[:, :-1]))
    if name == "images":
        requests.append(("values in [0, 255]", valid * 255))
    return requests


def main(version_dir, shapes):
    loaded = tf.saved_model.load(version_dir)
    report = {}
    for endpoint, arguments in shapes.items():
        signature = loaded.signatures[endpoint]
        valid = {name: tf.constant(good(shape)) for name, shape in arguments.items()}
        for name, shape in arguments.items():
            for label, array in malformed(name, shape):
                try:
                    signature(**{**valid, name: tf.constant(array)})
                    error = None
                except tf.errors.InvalidArgumentError as caught:
                    error = next((line for line in str(caught).splitlines() if "must" in line), str(caught))
                report[f"{endpoint}/{name}: {label}"] = error
        outputs = signature(**valid)  # still serving
        report[f"{endpoint}: good request afterwards"] = all(
            bool(np.all(np.isfinite(value.numpy()))) for value in outputs.values())
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1], json.loads(sys.argv[2]))
