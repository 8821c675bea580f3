"""caps_zoo's options and defaults, importable without TensorFlow.

``caps_zoo_options.training``: ``TrainConfig`` and the training recipes'
shared command line; ``caps_zoo_options.datasets``: the names of the
datasets, splits and binarizations. The recipes parse their arguments with
these before they import ``caps_zoo`` (issue 15: ``--help`` answers at
once). They live beside the package, not in it, because ``import caps_zoo``
imports TensorFlow on purpose: it registers every layer and model with
Keras, so that ``keras.saving.load_model`` finds them after a plain
``import caps_zoo``.
"""
