"""Export a zoo model for serving: TF Serving SavedModel and/or TFLite.

    python recipes/export_model.py --model deep_capsnet --saved-model-dir serving \
        --tflite deep_capsnet.tflite

Writes ``serving/deep_capsnet/<version>/`` (the model's signatures, e.g.
``classify``, or ``generate`` and ``reconstruct`` for DRAW/DCRW, plus
``serving_default``) and checks both exports' default signature against the
Keras model (on binarized images of the shipped MNIST sample, and fixed
noise) before it reports success.
"""

import argparse

import numpy as np

TOLERANCE = 1e-5


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="deep_capsnet", help="a registered model (default: %(default)s)")
    parser.add_argument("--weights", default="mnist", help="a pretrained tag or a weights file")
    parser.add_argument("--saved-model-dir", help="TF Serving base directory")
    parser.add_argument("--version", type=int, default=1, help="TF Serving version folder (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing version folder")
    parser.add_argument("--quiet", action="store_true", help="print only what was written")
    parser.add_argument("--tflite", help="path of the .tflite file to write")
    args = parser.parse_args(argv)
    if not (args.saved_model_dir or args.tflite):
        parser.error("give --saved-model-dir, --tflite, or both")
    # after parse_args: --help must not import TensorFlow (issue 15)
    import caps_zoo
    from caps_zoo import export

    # Each stage takes seconds to a minute (draw: ~45 s in all, tracing its
    # 64-step graphs): say what is going on.
    def stage(text):
        if not args.quiet:
            print(text, flush=True)

    stage(f"loading {args.model} (weights {args.weights!r})")
    model = caps_zoo.load(args.model, weights=args.weights)
    signature = export.default_signature(model)
    function, input_signature = model.serving_endpoints()[signature]
    inputs = example_inputs(input_signature)
    expected = {k: np.asarray(v) for k, v in function(**inputs).items()}

    exported = {}
    if args.saved_model_dir:
        stage(f"tracing {len(model.serving_endpoints())} endpoints into a SavedModel under {args.saved_model_dir}")
        version_dir = export.export_saved_model(
            model, args.saved_model_dir, version=args.version, overwrite=args.overwrite
        )
        exported[str(version_dir)] = export.load_saved_model_signature(version_dir, signature)(**inputs)
    if args.tflite:
        stage(f"converting '{signature}' to TFLite")
        path = export.export_tflite(model, args.tflite, signature)
        exported[str(path)] = export.tflite_predict(path, **inputs)
    stage(f"checking the exports against Keras on {len(next(iter(inputs.values())))} examples")
    for where, outputs in exported.items():
        error = max(float(np.abs(np.asarray(outputs[k], dtype=np.float64) - v).max())
                    for k, v in expected.items())
        if error > TOLERANCE:
            raise SystemExit(f"{where}: '{signature}' differs from Keras by {error:.2e} (> {TOLERANCE})")
        print(f"wrote {where} (max |'{signature}' outputs - Keras| on 16 examples: {error:.1e})")


def example_inputs(input_signature, count=16):
    """Real MNIST test images for ``images`` (binarized for the generative
    models, which take noise too), fixed N(0, 1) draws for ``noise``."""
    from caps_zoo import data  # here, not at the top: --help must not import TensorFlow (issue 15)

    names = [spec.name for spec in input_signature]
    inputs = {}
    for spec in input_signature:
        if spec.name == "images":
            images = data.load_arrays("mnist_sample", "test")[0][:count].astype("float32") / 255.0
            images = images[..., None]
            inputs["images"] = data.binarize_fixed(images) if "noise" in names else images
        else:
            shape = (count, *spec.shape[1:])
            inputs[spec.name] = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    return inputs


if __name__ == "__main__":
    main()
