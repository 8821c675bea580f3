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
    reading, writing = os.pipe()
    os.dup2(writing, 2)
    os.close(writing)

    def forward():
        # Line by line as they come, so that a crash during the import (a
        # fatal CHECK, an illegal instruction) still shows what came before.
        with os.fdopen(reading, "rb") as stream:
            for raw in stream:
                if kept_lines(raw.decode("utf-8", errors="replace")):
                    os.write(saved, raw)

    forwarder = threading.Thread(target=forward, name="caps_zoo-quiet-start", daemon=True)
    forwarder.start()
    try:
        import tensorflow as tf

        tf.config.list_physical_devices()  # the CUDA probe, caught too
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # the pipe's last writer closes: the forwarder ends
        forwarder.join(timeout=10)
        os.close(saved)
    return tf
