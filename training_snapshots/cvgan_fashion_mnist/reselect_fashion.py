"""Apply the selection rule of commit 'A GAN's epoch is a selection candidate only after a step
with its GAN terms on' to the two finished Fashion-MNIST GAN runs: epoch 1 ended at step 860 =
discriminator_start (no adversarial step), so epoch 2 is the only candidate. Its weights are the
run's final.weights.npz (float16, saved right after epoch 2, as BestWeights saves them); its
validation figures are the log's epoch-2 row. Exactly what BestWeights writes under the rule."""
import csv, json, shutil, sys
sys.path.insert(0, "/work/main")
from pathlib import Path
from caps_zoo.files import sha256_of
for m in ("cvgan", "vqgan"):
    src, run = Path(f"/work/runs/{m}_fashion_mnist"), Path(f"/work/runs/ship_{m}_fashion_mnist")
    rows = list(csv.DictReader(open(src / "log.csv")))
    assert len(rows) == 2
    row = rows[1]
    shutil.copy(src / "final.weights.npz", run / "best.weights.npz")
    old = json.loads((src / "best.json").read_text())
    validation = {k[4:]: float(v) for k, v in row.items() if k.startswith("val_")}
    best = {"epoch": 2, "metric": "val_l1_loss", "value": float(row["val_l1_loss"]), "mode": "min",
            "validation": validation, "validation_size": old["validation_size"],
            "weights_sha256": sha256_of(run / "best.weights.npz")}
    (run / "best.json").write_text(json.dumps(best, indent=2))
    metrics = json.loads((src / "metrics.json").read_text())
    metrics.update(selected_epoch=2, validation=validation)
    (run / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(m, best["value"], "was", old["epoch"], old["value"])
