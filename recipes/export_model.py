"""Export a zoo model for serving: TF Serving SavedModel and/or TFLite.

    python recipes/export_model.py --model deep_capsnet --saved-model-dir serving \
        --tflite deep_capsnet.tflite

Writes ``serving/deep_capsnet/<version>/`` (signatures ``classify`` and
``serving_default``) and checks both exports against the Keras model on the
shipped MNIST sample before it reports success.
"""

import argparse

import numpy as np

import caps_zoo
from caps_zoo import data, export

TOLERANCE = 1e-5


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="deep_capsnet")
    parser.add_argument("--weights", default="mnist", help="a pretrained tag or a weights file")
    parser.add_argument("--saved-model-dir", help="TF Serving base directory")
    parser.add_argument("--version", type=int, default=1)
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--tflite", help="path of the .tflite file to write")
    args = parser.parse_args(argv)
    if not (args.saved_model_dir or args.tflite):
        parser.error("give --saved-model-dir, --tflite, or both")

    model = caps_zoo.load(args.model, weights=args.weights)
    images = (data.load_arrays("mnist_sample", "test")[0][:16].astype("float32") / 255.0)[..., None]
    expected = model.predict(images, verbose=0)["scores"]

    exported = {}
    if args.saved_model_dir:
        version_dir = export.export_saved_model(
            model, args.saved_model_dir, version=args.version, overwrite=args.overwrite
        )
        exported[str(version_dir)] = export.load_saved_model_signature(version_dir)(images=images)
    if args.tflite:
        path = export.export_tflite(model, args.tflite)
        exported[str(path)] = export.tflite_predict(path, images)
    for where, outputs in exported.items():
        error = float(np.abs(np.asarray(outputs["scores"]) - expected).max())
        if error > TOLERANCE:
            raise SystemExit(f"{where}: scores differ from Keras by {error:.2e} (> {TOLERANCE})")
        print(f"wrote {where} (max |scores - Keras| on 16 MNIST images: {error:.1e})")


if __name__ == "__main__":
    main()
