"""What every training recipe offers a Keras user: --help that shows each
option's default and choices, at once (without TensorFlow), --tensorboard,
and mixed_float16."""

import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from caps_zoo import training

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
TRAINING_RECIPES = ("train_capsnet.py", "train_draw.py", "train_gran.py", "train_rcn.py", "train_cvgan.py",
                    "routing_grid.py")

# Run in a fresh process (this one imported TensorFlow in conftest): the
# code, then which of the heavy modules it imported (exit status 3 if any).
NO_TENSORFLOW_AFTER = """
import sys
{code}
heavy = sorted(name for name in ("tensorflow", "keras") if name in sys.modules)
if heavy:
    loaded = sorted(name for name in sys.modules if name.startswith("caps_zoo"))
    sys.stderr.write(f"imported {{heavy}}; caps_zoo modules loaded: {{loaded}}\\n")
    sys.exit(3)
"""
HELP = """
import runpy
sys.argv = [{path!r}, "--help"]
try:
    runpy.run_path({path!r}, run_name="__main__")
except SystemExit as exit:
    assert exit.code in (0, None), exit.code
else:
    raise AssertionError("--help did not exit")
"""


def run_without_tensorflow(code):
    """``code`` in a fresh Python; fails if it imported tensorflow or keras."""
    result = subprocess.run([sys.executable, "-c", NO_TENSORFLOW_AFTER.format(code=code)],
                            capture_output=True, text=True, timeout=120, cwd=RECIPES.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


# Every recipe, a new one too.
ALL_RECIPES = [path.name for path in sorted(RECIPES.glob("*.py"))]


@pytest.mark.parametrize("recipe", ALL_RECIPES)
def test_help_answers_without_importing_tensorflow(recipe):
    """--help took seconds: TensorFlow was imported before argparse (issue 15)."""
    result = run_without_tensorflow(HELP.format(path=str(RECIPES / recipe)))
    assert result.stdout.startswith("usage: ") and "--help" in result.stdout


def test_the_config_and_the_parsers_import_no_tensorflow():
    run_without_tensorflow("import caps_zoo_options.datasets\n"
                           "from caps_zoo_options.training import TrainConfig, recipe_argument_parser\n"
                           "recipe_argument_parser('d', TrainConfig(), ('capsnet',)).parse_args([])")


@pytest.mark.parametrize("recipe", TRAINING_RECIPES)
def test_help_shows_defaults_and_choices(recipe, capsys):
    namespace = runpy.run_path(str(RECIPES / recipe))
    with pytest.raises(SystemExit) as exit_info:
        namespace["parse_args"](["--help"])
    assert exit_info.value.code == 0
    shown = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    defaults = namespace["DEFAULTS"]
    listing = shown[shown.index("options:"):]  # past the usage line
    for flag, value in (("--model", defaults.model), ("--dataset", defaults.dataset),
                        ("--epochs", defaults.epochs), ("--batch-size", defaults.batch_size),
                        ("--output-dir", defaults.output_dir), ("--precision", defaults.precision)):
        option = listing[listing.index(f"{flag} "):]
        assert f"(default: {value})" in option[:600], (flag, option[:600])
    assert "{mnist,fashion_mnist,cifar10" in shown  # --dataset's choices
    assert "mixed_float16" in shown and "--tensorboard" in shown


@pytest.mark.parametrize("recipe", TRAINING_RECIPES)
def test_seed_reaches_the_run_config(recipe):
    """--seed (the spread between runs of one recipe); 0 when not given."""
    from caps_zoo_options.training import config_from_args

    parse = runpy.run_path(str(RECIPES / recipe))["parse_args"]
    assert config_from_args(parse(["--seed", "100"])).seed == 100
    assert config_from_args(parse([])).seed == 0


def test_a_dataset_the_recipe_cannot_train_is_refused(capsys):
    parse = runpy.run_path(str(RECIPES / "train_draw.py"))["parse_args"]
    with pytest.raises(SystemExit):
        parse(["--dataset", "multi_mnist"])  # pairs: the capsule recipe's alone
    assert "invalid choice: 'multi_mnist'" in capsys.readouterr().err
    capsnet = runpy.run_path(str(RECIPES / "train_capsnet.py"))["parse_args"](["--dataset", "multi_mnist"])
    assert capsnet.dataset == "multi_mnist"


def _gran_run(run_dir, **changes):
    return training.TrainConfig(**{**dict(model="gran1", epochs=2, batch_size=32, steps_per_epoch=2,
                                          shift_pixels=0, output_dir=str(run_dir), verbose=0,
                                          validation=True, validation_size=64, selection_metric=None),
                                       **changes})


def test_tensorboard_logs_scalars_and_sample_grids_per_epoch(tiny_mnist, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    training.train(_gran_run(run_dir, tensorboard=True, sample_grids=True))
    logs = run_dir / training.TENSORBOARD_DIR

    def load(folder):
        accumulator = EventAccumulator(str(logs / folder))
        accumulator.Reload()
        return accumulator

    # TF2 summaries store scalars as tensors (TensorBoard's scalar plugin reads them).
    train = load("train")
    assert [event.step for event in train.Tensors("epoch_loss")] == [0, 1]
    assert "epoch_discriminator_loss" in train.Tags()["tensors"]
    assert [event.step for event in load("validation").Tensors("epoch_loss")] == [0, 1]
    images = load("samples").Tensors("samples")  # [width, height, PNG] per step
    assert [event.step for event in images] == [1, 2]
    width, height, png = images[0].tensor_proto.string_val
    assert int(width) > 100 and png.startswith(b"\x89PNG")


def test_tensorboard_without_the_package_fails_before_training(tiny_mnist, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def without_tensorboard(name, *args, **kwargs):
        if name == "tensorboard" or name.startswith("tensorboard."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_tensorboard)
    with pytest.raises(ImportError, match=r'pip install "caps_zoo\[tensorboard\]"'):
        training.train(_gran_run(tmp_path / "run", tensorboard=True))
    assert not (tmp_path / "run" / "log.csv").exists() or not (tmp_path / "run" / "log.csv").read_text().strip()


def test_a_recipe_run_trains_in_mixed_float16(tiny_mnist, tmp_path):
    """The precision recipes refused until now: a GAN (two loss-scaled optimizers) trains, losses finite."""
    import csv
    import math

    run_dir = tmp_path / "run"
    training.train(_gran_run(run_dir, epochs=1, precision="mixed_float16"))
    with open(run_dir / "log.csv") as handle:
        (row,) = list(csv.DictReader(handle))
    assert all(math.isfinite(float(row[name])) for name in ("loss", "discriminator_loss", "generator_loss"))


def test_a_recipe_trains_on_cifar10_at_its_image_shape(tmp_path, monkeypatch):
    """--dataset cifar10 builds the model at 32x32x3 (tfds.testing.mock_data: offline, made-up images)."""
    import json
    import sys

    tfds = pytest.importorskip("tensorflow_datasets")
    from caps_zoo import data

    monkeypatch.setenv(data.DATA_ENV, str(tmp_path))  # no local npz: tfds serves cifar10
    run_dir = tmp_path / "run"
    argv = [str(RECIPES / "train_capsnet.py"), "--dataset", "cifar10", "--epochs", "1", "--batch-size", "8",
            "--steps-per-epoch", "1", "--train-limit", "16", "--test-limit", "8", "--routing-iterations", "1",
            "--output-dir", str(run_dir), "--verbose", "0"]
    monkeypatch.setattr(sys, "argv", argv)
    with tfds.testing.mock_data(num_examples=16):
        runpy.run_path(argv[0], run_name="__main__")
    results = json.loads((run_dir / "metrics.json").read_text())
    assert 0 <= results["test"]["accuracy"] <= 1
    import caps_zoo

    model = caps_zoo.load("capsnet", weights=str(run_dir / "final.weights.npz"), image_shape=(32, 32, 3))
    assert model.image_shape == (32, 32, 3)
