"""One worker of a ``--strategy multi_worker`` training: the other half of
``test_multi_worker.py``.

    python tests/multi_worker_driver.py RECIPE STATE_OUT KILL_AT_EPOCH RECIPE_ARGS...

Runs the recipe's command line as ``python RECIPE RECIPE_ARGS...`` would,
with two callbacks added to its ``training.train`` call: when training ends,
the worker writes its own variables (the model's and its optimizers') to
``STATE_OUT`` (a non-chief worker's run directory is scratch, removed at the
end); with ``KILL_AT_EPOCH`` >= 0 it kills itself with SIGKILL as that epoch
begins (after the previous epoch's backup). As in ``fault_driver.py`` they
wrap the function the recipe calls, so the library carries no test hooks.
"""

import os
import runpy
import signal
import sys


def main():
    recipe, state_out, kill_at_epoch, *recipe_args = sys.argv[1:]
    kill_at_epoch = int(kill_at_epoch)

    import keras
    import numpy as np

    from caps_zoo import training

    class WorkerHooks(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == kill_at_epoch:
                sys.stdout.flush()
                os.kill(os.getpid(), signal.SIGKILL)

        def on_train_end(self, logs=None):
            variables = [*self.model.weights,
                         *(v for optimizer in training.model_optimizers(self.model) for v in optimizer.variables)]
            np.savez(state_out, __paths__=np.array([v.path for v in variables]),
                     **{f"{index:04d}": np.asarray(v.numpy()) for index, v in enumerate(variables)})

    train = training.train

    def train_with_hooks(config, callbacks=()):
        return train(config, callbacks=[*callbacks, WorkerHooks()])

    training.train = train_with_hooks  # what run_recipe calls
    sys.argv = [recipe, *recipe_args]
    runpy.run_path(recipe, run_name="__main__")


if __name__ == "__main__":
    main()
