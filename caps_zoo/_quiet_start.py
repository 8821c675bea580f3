"""Import TensorFlow without its start-up chatter.

TensorFlow 2.21 logs through absl before ``absl::InitializeLog`` runs, so
``TF_CPP_MIN_LOG_LEVEL`` no longer hides its start-up lines: the oneDNN
notice, the CPU-feature notice, "Could not find cuda drivers" and, on the
first device query, "failed call to cuInit" (six lines on a machine without
a GPU, before any output of the zoo). ``import_tensorflow`` imports it with
the process's stderr (file descriptor 2, where C++ writes) caught, queries
the devices once so that the CUDA probe happens inside too, and writes back
every caught line that is not one of those notices: errors stay visible.

It filters only when ``TF_CPP_MIN_LOG_LEVEL`` is 2 or more (the zoo's
default, ``caps_zoo/__init__.py``); a user who sets 0 or 1 sees everything,
and nothing is filtered when TensorFlow was imported before the zoo.
"""

import os
import re
import sys
import tempfile

# absl's INFO / WARNING lines ("I0000 00:00:... file.cc:NN] ..."), the line
# absl prints before it is initialised, the CPU-feature notice's second line,
# and the CUDA probe of a machine without a GPU (an absl ERROR line).
NOISE = re.compile(
    r"^[IW]\d{4} \d\d:\d\d:"
    r"|All log messages before absl::InitializeLog\(\) is called"
    r"|^To enable the following instructions:"
    r"|cuInit|cuda_platform\.cc|cudart_stub\.cc"
)


def filtering():
    """Whether start-up notices are hidden: only at TF_CPP_MIN_LOG_LEVEL >= 2."""
    try:
        return int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0")) >= 2
    except ValueError:
        return False


def kept_lines(text):
    """The caught lines that are not start-up notices."""
    return [line for line in text.splitlines() if line.strip() and not NOISE.search(line)]


def import_tensorflow():
    if "tensorflow" in sys.modules or not filtering():
        import tensorflow as tf

        return tf
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()  # the CUDA probe, caught too
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            kept = kept_lines(caught.read().decode("utf-8", errors="replace"))
            if kept:
                sys.stderr.write("\n".join(kept) + "\n")
    return tf
