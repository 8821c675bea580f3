"""A training (or shipping) process that kills itself with SIGKILL at a chosen
point: the other half of ``test_fault_injection.py``.

    python tests/fault_driver.py RUN_DIR POINT

SIGKILL cannot be caught: no ``finally``, no ``atexit``, no Keras cleanup
runs, exactly as when a session ends or the kernel's OOM killer strikes. The
faults are installed by wrapping the functions the run calls at that point,
so the library itself carries no test hooks.
"""

import os
import signal
import sys


def config(run_dir):
    """The run every fault scenario kills and then resumes: gran1 (the
    smallest model to build), 2 epochs of 1 step."""
    from caps_zoo import training

    return training.TrainConfig(model="gran1", epochs=2, batch_size=32, steps_per_epoch=1, test_limit=64,
                                output_dir=str(run_dir), verbose=0)


def die():
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def install(point, run_dir):
    import keras

    from caps_zoo import training

    if point == "mid_epoch":
        # Epoch 2, after its step but before its end: epoch 1 is backed up, epoch 2 not.
        class MidEpoch(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                self.epoch = epoch

            def on_train_batch_end(self, batch, logs=None):
                if self.epoch == 1 and batch == 0:
                    die()

        return [MidEpoch()]
    if point in ("first_backup_write", "backup_write"):
        # Torn half way through the write of epoch 1's (or 2's) backup.
        save_weights, backups = keras.Model.save_weights, []

        def torn_save(self, filepath, *args, **kwargs):
            save_weights(self, filepath, *args, **kwargs)
            backups.append(filepath)
            if len(backups) == (1 if point == "first_backup_write" else 2):
                with open(filepath, "r+b") as handle:
                    handle.truncate(os.path.getsize(filepath) // 2)
                die()

        keras.Model.save_weights = torn_save
    elif point in ("before_final_weights", "before_metrics"):
        # After fit returned: no final.weights.npz yet, or no metrics.json yet.
        save_weights, write_json = training.weights_io.save_weights, training.write_json_atomically

        def kill_before_final(model, path, *args, **kwargs):
            if point == "before_final_weights" and str(path).endswith("final.weights.npz"):
                die()
            return save_weights(model, path, *args, **kwargs)

        def kill_before_metrics(path, record):
            if point == "before_metrics" and str(path).endswith("metrics.json"):
                die()
            return write_json(path, record)

        training.weights_io.save_weights = kill_before_final
        training.write_json_atomically = kill_before_metrics
    else:
        raise SystemExit(f"unknown fault point {point!r}")
    return []


def ship_and_die_between_moves(run_dir):
    """ship_weights --replace, killed just after the weights moved into place
    (before the log, the figures and the metadata)."""
    import runpy

    replace = os.replace

    def replace_then_die(source, target):
        replace(source, target)
        # (Not the weights' own atomic write into the staging folder.)
        if str(target).endswith(".weights.npz") and ".staging-" not in str(target):
            die()

    os.replace = replace_then_die
    sys.argv = ["ship_weights.py", "--run-dir", str(run_dir), "--command", "test", "--replace",
                "--frechet-samples", "0"]
    runpy.run_path(os.path.join(os.path.dirname(__file__), "..", "recipes", "ship_weights.py"),
                   run_name="__main__")


if __name__ == "__main__":
    run_dir, point = sys.argv[1], sys.argv[2]
    if point == "ship":
        ship_and_die_between_moves(run_dir)
    else:
        from caps_zoo import training

        training.train(config(run_dir), callbacks=install(point, run_dir))
    print("not killed")  # the test fails on this: the fault point was never reached
