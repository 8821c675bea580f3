"""The routing-iteration grid (caps_zoo.routing_grid): every cell trains
with its own iterations, a finished grid is read back, a half-done one
trains only what is missing, and the figures and table are written."""

import dataclasses
import json
import shutil

import pytest

from caps_zoo import routing_grid
from caps_zoo.training import TrainConfig

# deep_capsnet's two routing stages on a fraction of its width.
SMALL = dict(conv_filters=(16, 16), primary_capsule_types=4, routing_capsules=((6, 8), (10, 8)),
             decoder_units=(32,))


def base(tmp_path):
    return TrainConfig(model="deep_capsnet", model_overrides=SMALL, epochs=1, batch_size=16,
                       steps_per_epoch=2, train_limit=64, validation=True,
                       validation_size=64, output_dir=str(tmp_path), verbose=0)


def test_grid_trains_each_cell_and_resumes(tmp_path):
    said = []
    results = routing_grid.run_grid(base(tmp_path), tmp_path / "grid", (1, 2), test_limit=64,
                                    progress=said.append)
    assert [(r["primary_iterations"], r["secondary_iterations"]) for r in results] == [
        (1, 1), (1, 2), (2, 1), (2, 2)]
    for r in results:
        config = json.loads((tmp_path / "grid" / routing_grid.cell_name(
            r["primary_iterations"], r["secondary_iterations"]) / "config.json").read_text())
        assert config["routing_iterations"] == [r["primary_iterations"], r["secondary_iterations"]]
        assert 0 <= r["validation_accuracy"] <= 1 and 0 <= r["test_accuracy"] <= 1
        assert r["test_images"] == 64 and r["seconds_per_epoch"] > 0
    stored = json.loads((tmp_path / "grid" / routing_grid.RESULTS).read_text())
    assert stored["cells"] == results

    # Killed before its last cell: only that cell trains again; the others are read back.
    shutil.rmtree(tmp_path / "grid" / "r1_2_r2_2")
    said.clear()
    again = routing_grid.run_grid(base(tmp_path), tmp_path / "grid", (1, 2), test_limit=64,
                                    progress=said.append)
    assert [s.endswith("read back") for s in said] == [True, True, True, False]
    assert again[:3] == results[:3]

    # A finished cell of other settings is never read back as this grid's.
    with pytest.raises(ValueError, match=r"finished cell of a grid with other settings \(epochs: 1 -> 2"):
        routing_grid.run_grid(dataclasses.replace(base(tmp_path), epochs=2), tmp_path / "grid", (1, 2),
                              test_limit=64, progress=said.append)

    assert routing_grid.heat_map(again, "test_accuracy", tmp_path / "a.png", percent=True).stat().st_size > 0
    table = routing_grid.markdown_table(again)
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert len(rows) == 6 and any(row.startswith("| 2 | 1 |") for row in rows)
    assert all(row.endswith("| 1 |") for row in rows[2:])  # one machine, named under the table
    assert "Machine 1: " in table and "not comparable" not in table
    moved = [{**again[0], "machine": "another machine"}, *again[1:]]
    assert "not comparable across machines" in routing_grid.markdown_table(moved)


def test_two_shards_share_a_grid_and_an_unsharded_run_reads_them_back(tmp_path):
    said = []
    first = routing_grid.run_grid(base(tmp_path), tmp_path / "grid", (1, 2), test_limit=64,
                                  progress=said.append, shard=(1, 2))
    # Cells 1 and 3 of the row-major order: (1, 1) and (2, 1); the others are left.
    assert [(r["primary_iterations"], r["secondary_iterations"]) for r in first] == [(1, 1), (2, 1)]
    assert sum(s.endswith("another shard's") for s in said) == 2
    assert not (tmp_path / "grid" / routing_grid.RESULTS).exists()  # left to the unsharded run
    second = routing_grid.run_grid(base(tmp_path), tmp_path / "grid", (1, 2), test_limit=64,
                                   progress=said.append, shard=(2, 2))
    assert [(r["primary_iterations"], r["secondary_iterations"]) for r in second] == [(1, 1), (1, 2), (2, 1),
                                                                                         (2, 2)]
    said.clear()
    whole = routing_grid.run_grid(base(tmp_path), tmp_path / "grid", (1, 2), test_limit=64,
                                  progress=said.append)
    assert all(s.endswith("read back") for s in said) and whole == second
    assert json.loads((tmp_path / "grid" / routing_grid.RESULTS).read_text())["cells"] == whole
    with pytest.raises(ValueError, match="1 <= I <= N"):
        routing_grid.run_grid(base(tmp_path), tmp_path / "grid", (1, 2), shard=(3, 2))


def test_grid_refuses_what_it_cannot_compare(tmp_path):
    with pytest.raises(ValueError, match="validation split"):
        routing_grid.run_grid(TrainConfig(model="deep_capsnet"), tmp_path, (1,))
    capsnet = TrainConfig(model="capsnet", validation=True)
    with pytest.raises(ValueError, match="two routing stages"):
        routing_grid.run_grid(capsnet, tmp_path, (1,))


def test_recipe_help_names_the_grid(capsys):
    import runpy
    from pathlib import Path

    recipe = runpy.run_path(str(Path(__file__).resolve().parent.parent / "recipes" / "routing_grid.py"))
    args = recipe["parse_args"](["--iterations", "1", "2", "--test-limit", "100"])
    assert args.iterations == [1, 2] and args.validation and args.model == "deep_capsnet"
    assert args.epochs == 2 and args.train_limit == 10000 and args.test_limit == 100


@pytest.mark.parametrize("text", ["0/2", "3/2", "1", "a/b", "1/2/3"])
def test_the_shard_option_refuses_what_is_not_i_of_n(text):
    import argparse

    from caps_zoo_options.training import shard

    assert shard("2/2") == (2, 2)
    with pytest.raises(argparse.ArgumentTypeError, match="I/N"):
        shard(text)


def test_readme_table_is_the_committed_grid():
    """The README's grid table is what the committed records say, row for row."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    records = root / "benchmarks" / "results" / "routing_grid_2026-12-07" / "seed_0"
    cells = json.loads((records / "results.json").read_text())["cells"]
    assert len(cells) == 16
    for cell in cells:  # each row from its own cell's files
        cell_dir = records / routing_grid.cell_name(cell["primary_iterations"], cell["secondary_iterations"])
        assert json.loads((cell_dir / routing_grid.CELL_TEST).read_text())["accuracy"] == cell["test_accuracy"]
    table = routing_grid.markdown_table(cells).split("\n\n")[0]
    assert table in (root / "README.md").read_text()
