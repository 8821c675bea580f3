"""Issue 12's comparison of the CV-VAE family's bottlenecks, read from the
shipped metadata (what ``recipes/ship_weights.py`` measured on the test
split, once per shipped model): one row per shipped model of a dataset.

    from caps_zoo import bottleneck_comparison

    rows = bottleneck_comparison.comparison_rows("mnist")
    print(bottleneck_comparison.markdown_table(rows))

Nothing here measures: a figure missing from a model's metadata (say, the
Frechet distance of a Fashion-MNIST model while no Fashion-MNIST
classifier ships) is shown as "n/a" with the reason in the row's
``notes``, never filled in. ``recipes/compare_bottlenecks.py`` prints the
table the README shows and draws the reconstructions of every model side by
side.
"""

import math

from caps_zoo import registry

# The rows' order: the paper's models, the reference mode, the baseline, the control.
FAMILY = ("cv_vae", "cvgan", "cv_vae_reference", "vq_vae", "vqgan", "continuous_ae")

# What reaches the decoder, per image (28x28 digits, an 8x8 map at the
# bottleneck); a GAN shares its autoencoder's bottleneck.
_CAPSULE_ROUTING = "routing onto 16 parents: 64 code ids + 16 poses of 16 floats"
_VECTOR_CODES = "nearest of 16 codes: 64 code ids (256 bits)"
BOTTLENECK_DESCRIPTIONS = {
    "cv_vae": _CAPSULE_ROUTING,
    "cvgan": _CAPSULE_ROUTING,
    "cv_vae_reference": "reference mode, capsules untrained: a continuous map (nothing quantized)",
    "vq_vae": _VECTOR_CODES,
    "vqgan": _VECTOR_CODES,
    "continuous_ae": "none: 8x8x16 = 1,024 floats (the control)",
}

COLUMNS = ("model", "bottleneck", "epoch", "MSE", "PSNR (dB)", "SSIM", "codes used", "perplexity",
           "Frechet, reconstructions", "Frechet, prior samples", "parameters", "precision", "wall time (h)")


def comparison_rows(dataset="mnist", models=FAMILY):
    """One dict per model of ``models`` that ships weights tagged ``dataset``
    (the tag is the dataset's name), with the test-split figures of its
    metadata; models without that tag are left out."""
    rows = []
    for name in models:
        if dataset not in registry.get_spec(name).pretrained:
            continue
        metadata = registry.load_metadata(name, dataset)
        quality = metadata["test_reconstruction"]
        notes = []
        reconstruction_frechet = quality["frechet"].get("frechet_distance")
        if reconstruction_frechet is None:
            notes.append(f"reconstructions' Frechet distance: {quality['frechet'].get('skipped', 'not measured')}")
        sample_frechet = (metadata.get("frechet") or {}).get("frechet_distance")
        if sample_frechet is None:
            notes.append("no prior samples: its bottleneck assigns no discrete codes"
                         if "prior" not in metadata else "prior samples' Frechet distance: not measured")
        rows.append({
            "model": name,
            "bottleneck": BOTTLENECK_DESCRIPTIONS.get(name, ""),
            "selected_epoch": metadata["selected_epoch"],
            "epochs_completed": metadata["epochs_completed"],
            "mse": quality["mse"],
            "psnr_db": quality["psnr_db"],
            "ssim": quality["ssim"],
            "codes_used": metadata.get("test_codes_used"),
            "code_perplexity": metadata.get("test_code_perplexity"),
            "reconstruction_frechet": reconstruction_frechet,
            "sample_frechet": sample_frechet,
            "parameters": metadata["parameters"],
            "precision": metadata["precision"],
            "wall_hours": metadata["wall_hours"],
            "test_images": quality["n_images"],
            "notes": notes,
        })
    return rows


def _figure(value, digits):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def markdown_table(rows):
    """``rows`` (``comparison_rows``) as a Markdown table, one line per model."""
    if not rows:
        raise ValueError("no rows: no model of the family ships weights for that dataset yet.")
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    for row in rows:
        cells = [
            f"`{row['model']}`", row["bottleneck"], f"{row['selected_epoch']} of {row['epochs_completed']}",
            _figure(row["mse"], 5), _figure(row["psnr_db"], 2), _figure(row["ssim"], 4),
            "n/a" if row["codes_used"] is None else f"{row['codes_used']:.0%}",
            _figure(row["code_perplexity"], 2), _figure(row["reconstruction_frechet"], 4),
            _figure(row["sample_frechet"], 4), f"{row['parameters']:,}", row["precision"], _figure(row["wall_hours"], 2),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
