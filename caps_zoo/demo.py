"""The zoo's main job: a shipped pretrained model on shipped real MNIST images.

    python -m caps_zoo.demo                      # deep_capsnet
    python -m caps_zoo.demo --model capsnet --output capsnet_demo.png

Prints the accuracy on the 1,000 real MNIST test images that ship inside the
package and writes a PNG grid of inputs beside their reconstructions.
"""

import argparse
import os

import numpy as np

import caps_zoo
from caps_zoo import data
from caps_zoo.plots import reconstruction_grid


def run(model_name="deep_capsnet", output="reconstructions.png", examples=32):
    model = caps_zoo.load(model_name)
    sample = data.load("mnist_sample", "test", batch_size=250)
    metrics = model.evaluate(sample, return_dict=True, verbose=1)
    images, labels = data.load_arrays("mnist_sample", "test")
    images = (images[:examples].astype("float32") / 255.0)[..., None]
    outputs = model.predict(images, verbose=0)
    predictions = np.argmax(outputs["scores"], axis=-1)
    reconstruction_grid(images, outputs["reconstruction"], labels[:examples], predictions, output)
    return metrics, output


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="deep_capsnet", choices=caps_zoo.list_models(pretrained=True))
    parser.add_argument("--output", default="reconstructions.png")
    parser.add_argument("--examples", type=int, default=32)
    args = parser.parse_args(argv)
    metrics, path = run(args.model, args.output, args.examples)
    metadata = caps_zoo.load_metadata(args.model)
    count = data.num_examples("mnist_sample", "test")
    print(
        f"{args.model}: accuracy {metrics['accuracy']:.2%} on {count} real MNIST test images "
        f"shipped in caps_zoo/data (weights: {metadata['epochs_completed']} epochs, "
        f"full MNIST test accuracy {metadata['test_accuracy']:.2%})."
    )
    print(f"Inputs beside reconstructions: {os.path.abspath(path)}")


if __name__ == "__main__":
    main()
