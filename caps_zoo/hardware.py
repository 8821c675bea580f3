"""What this machine computes with, for run records and for the precision check.

The zoo's machines are not one machine: on 2026-12-02 one session had a
2-core Intel Xeon with AVX512_BF16 and AMX, the next a 2-core AMD EPYC with
AVX2 only. The same cvgan training step (batch 64, one core, median of 5)
took 1.32 s in mixed_bfloat16 on the Xeon and 39.7 s on the EPYC, where
float32 took 5.3 s: without bf16 units, oneDNN emulates bfloat16 and mixed
precision runs 7x slower than float32 instead of 1.5x faster
(``benchmarks/results/cv_vae_step_2026-12-02``). So a run's record names the
CPU and its bf16 units, and asking for ``mixed_bfloat16`` on a CPU without
them warns.
"""

import os
import platform
import warnings

# Linux /proc/cpuinfo flags of the x86 instructions that compute in bfloat16.
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def _cpuinfo(path="/proc/cpuinfo"):
    """``(model name, set of flags)`` of the first CPU; ``(None, None)`` where
    the file does not exist (not Linux) or names no flags (not x86)."""
    try:
        with open(path) as file:  # closed at once: a bare open() leaked a ResourceWarning in the tests
            text = file.read()
    except OSError:
        return None, None
    name, flags = None, None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and name is None:
            name = value.strip()
        elif key == "flags" and flags is None:
            flags = set(value.split())
    return name, flags


def cpu_bf16_units(path="/proc/cpuinfo"):
    """The CPU's bfloat16 instruction sets (e.g. ``("avx512_bf16", "amx_bf16")``),
    ``()`` if it has none, ``None`` where this cannot be read (not Linux x86)."""
    return _bf16_units(_cpuinfo(path)[1])


def _bf16_units(flags):
    return None if flags is None else tuple(flag for flag in BF16_FLAGS if flag in flags)


def machine_description(path="/proc/cpuinfo"):
    """E.g. 'x86_64, AMD EPYC, 2 CPU cores (no bf16 units), no GPU': recorded
    with every measurement, since figures differ several-fold between CPUs."""
    import tensorflow as tf

    name, flags = _cpuinfo(path)  # read once for both
    units = _bf16_units(flags)
    bf16 = "" if units is None else f" ({', '.join(units) if units else 'no bf16 units'})"
    cpu = f"{name}, " if name else ""
    gpus = tf.config.list_physical_devices("GPU")
    accelerators = f"{len(gpus)} GPU(s)" if gpus else "no GPU"
    return f"{platform.machine()}, {cpu}{os.cpu_count()} CPU cores{bf16}, {accelerators}"


def check_precision(precision, path="/proc/cpuinfo"):
    """Warn when ``mixed_bfloat16`` is asked for where it will be slow: on a
    CPU known to lack bf16 units, with no GPU. Nothing is refused: the
    results are the same, only the time differs."""
    if precision != "mixed_bfloat16":
        return
    name, flags = _cpuinfo(path)
    if _bf16_units(flags) != ():
        return
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return
    warnings.warn(
        f"precision 'mixed_bfloat16' on a CPU without bf16 units ({name or 'this CPU'}: none of "
        f"{', '.join(BF16_FLAGS)}): TensorFlow emulates bfloat16 there, which was measured 7x slower "
        "than float32 (a cvgan step 39.7 s against 5.3 s). Use --precision float32 on this machine.",
        RuntimeWarning,
        stacklevel=2,
    )
