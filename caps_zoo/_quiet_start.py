"""Import TensorFlow without its start-up chatter.

TensorFlow 2.21 logs through absl before ``absl::InitializeLog`` runs, so
``TF_CPP_MIN_LOG_LEVEL`` no longer hides its start-up lines: the oneDNN
notice, the CPU-feature notice, "Could not find cuda drivers" and, on the
first device query, "failed call to cuInit" (six lines on a machine without
a GPU, before any output of the zoo). ``import_tensorflow`` imports it with
the process's stderr (file descriptor 2, where C++ writes) caught, queries
the devices once so that the CUDA probe happens inside too, and writes back
every caught line that is not one of those notices, as it comes: warnings
and errors stay visible.

It filters only when ``TF_CPP_MIN_LOG_LEVEL`` is 2 or more (the zoo's
default, ``caps_zoo/__init__.py``); a user who sets 0 or 1 sees everything,
and nothing is filtered when TensorFlow was imported before the zoo.
"""

import contextlib
import os
import re
import sys
import threading

# absl's INFO lines ("I0000 00:00:... file.cc:NN] ..."), the line absl
# prints before it is initialised, the CPU-feature notice's second line, and
# the one line of the CUDA probe on a machine without a GPU. Warnings and
# every other error (a driver mismatch, say) pass.
NOISE = re.compile(
    r"^I\d{4} \d\d:\d\d:"
    r"|^WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|^To enable the following instructions:"
    r"|^E\d{4} .*cuda_platform\.cc:\d+\] failed call to cuInit: INTERNAL: CUDA error: "
    r"Failed call to cuInit: UNKNOWN ERROR \(303\)$"
    # LiteRT's notice on its first run of a model (export.tflite_predict).
    r"|^INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.$"
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


@contextlib.contextmanager
def filtered_stderr():
    """File descriptor 2 (where C++ writes) through a pipe, for the block:
    every line that is not a start-up notice is written back as it comes
    (line by line, so that a crash inside still shows what came before).
    Does nothing at TF_CPP_MIN_LOG_LEVEL below 2."""
    if not filtering():
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    reading, writing = os.pipe()
    os.dup2(writing, 2)
    os.close(writing)

    def forward():
        with os.fdopen(reading, "rb") as stream:
            for raw in stream:
                if kept_lines(raw.decode("utf-8", errors="replace")):
                    os.write(saved, raw)

    forwarder = threading.Thread(target=forward, name="caps_zoo-quiet-start", daemon=True)
    forwarder.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # the pipe's last writer closes: the forwarder ends
        forwarder.join(timeout=10)
        os.close(saved)


def import_tensorflow():
    if "tensorflow" in sys.modules:
        import tensorflow as tf

        return tf
    with filtered_stderr():
        import tensorflow as tf

        tf.config.list_physical_devices()  # the CUDA probe, caught too
    return tf
