"""The CV-VAE family's comparison table: it shows what the shipped metadata
says, model by model, and "n/a" (with the reason) where a figure was not
measured; models that do not ship the dataset's tag are left out."""

import dataclasses
import json
import runpy
from pathlib import Path

import pytest

from caps_zoo import bottleneck_comparison, registry

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "compare_bottlenecks.py"


def _metadata(mse, frechet, sample_frechet=None, codes=True):
    metadata = {
        "selected_epoch": 2, "epochs_completed": 2, "parameters": 1234567, "wall_hours": 0.61,
        "precision": "float32",
        "test_reconstruction": {"mse": mse, "psnr_db": 20.5, "ssim": 0.91, "n_images": 10000,
                                "frechet": ({"frechet_distance": frechet} if frechet is not None else
                                            {"frechet_distance": None, "skipped": "no classifier"})},
    }
    if codes:
        metadata.update(test_codes_used=0.75, test_code_perplexity=11.25, prior={"epochs": 20},
                        frechet={"frechet_distance": sample_frechet})
    return metadata


@pytest.fixture
def shipped(monkeypatch):
    """vq_vae and continuous_ae ship 'mnist' (hand-made metadata); nothing else does."""
    stored = {("vq_vae", "mnist"): _metadata(0.0123456, 0.0042, 0.0311),
              ("continuous_ae", "mnist"): _metadata(0.001, None, codes=False)}
    real_spec = registry.get_spec

    def spec(name):
        return dataclasses.replace(real_spec(name), pretrained=tuple(tag for (model, tag) in stored if model == name))

    monkeypatch.setattr(registry, "get_spec", spec)
    monkeypatch.setattr(registry, "load_metadata", lambda name, tag: json.loads(json.dumps(stored[(name, tag)])))
    return stored


def test_rows_follow_the_family_order_and_show_the_metadata(shipped):
    rows = bottleneck_comparison.comparison_rows("mnist")
    assert [row["model"] for row in rows] == ["vq_vae", "continuous_ae"]
    vq, control = rows
    assert vq["mse"] == 0.0123456 and vq["codes_used"] == 0.75 and vq["sample_frechet"] == 0.0311
    assert vq["notes"] == []
    assert control["codes_used"] is None and control["reconstruction_frechet"] is None
    assert control["notes"] == ["reconstructions' Frechet distance: no classifier",
                                "no prior samples: its bottleneck assigns no discrete codes"]
    assert bottleneck_comparison.comparison_rows("fashion_mnist") == []


def test_markdown_table_prints_each_figure_once_and_n_a_for_the_unmeasured(shipped):
    table = bottleneck_comparison.markdown_table(bottleneck_comparison.comparison_rows("mnist"))
    lines = table.splitlines()
    assert len(lines) == 4 and lines[0].count("|") == len(bottleneck_comparison.COLUMNS) + 1
    assert "| `vq_vae` |" in lines[2] and "| 0.01235 |" in lines[2] and "| 75% | 11.25 |" in lines[2]
    assert "| 0.0042 | 0.0311 | 1,234,567 | float32 | 0.61 |" in lines[2]
    assert lines[3].count("n/a") == 4  # codes used, perplexity, both Frechet distances
    with pytest.raises(ValueError, match="no model of the family ships"):
        bottleneck_comparison.markdown_table([])


def test_recipe_prints_the_table_and_refuses_a_dataset_nothing_ships_for(shipped, capsys):
    main = runpy.run_path(str(RECIPE))["main"]
    main(["--dataset", "mnist"])
    printed = capsys.readouterr().out
    assert printed.startswith("| model | bottleneck |") and "- continuous_ae: no prior samples" in printed
    with pytest.raises(SystemExit) as refused:
        main(["--dataset", "fashion_mnist"])
    assert refused.value.code == 2
    assert "ships weights tagged 'fashion_mnist' yet" in capsys.readouterr().err
