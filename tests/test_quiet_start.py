"""`import caps_zoo` is silent: TensorFlow's start-up notices are filtered
(caps_zoo._quiet_start), its errors are not."""

import os
import subprocess
import sys

from caps_zoo import _quiet_start

# What TensorFlow 2.21 printed at import on this project's CPU machines.
STARTUP = """\
WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
I0000 00:00:1796172911.919601   27423 port.cc:153] oneDNN custom operations are on. You may see slightly different numerical results due to floating-point round-off errors from different computation orders. To turn them off, set the environment variable `TF_ENABLE_ONEDNN_OPTS=0`.
I0000 00:00:1796172911.920701   27423 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.
I0000 00:00:1796172901.513909   27910 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use available CPU instructions in performance-critical operations.
To enable the following instructions: AVX2 AVX512F AVX512_VNNI AVX512_BF16 FMA, in other operations, rebuild TensorFlow with the appropriate compiler flags.
E0000 00:00:1796172914.769106   27969 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)
"""


def test_startup_notices_are_dropped_and_errors_kept():
    assert _quiet_start.kept_lines(STARTUP) == []
    error = "E0000 00:00:1796172914.769106   27969 op_kernel.cc:1] something real failed"
    driver = ("E0000 00:00:1796172914.769106   27969 cuda_platform.cc:52] failed call to cuInit: "
              "CUDA_ERROR_SYSTEM_DRIVER_MISMATCH: system has unsupported display driver / cuda driver combination")
    warning = "W0000 00:00:1796172914.769106   27969 gpu_device.cc:2] Cannot dlopen some GPU libraries."
    kept = _quiet_start.kept_lines(STARTUP + "\n".join([error, driver, warning, "Traceback (most recent call last):"]))
    assert kept == [error, driver, warning, "Traceback (most recent call last):"]


def test_litert_notice_is_dropped_and_its_errors_kept():
    notice = "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
    error = "ERROR: Didn't find op for builtin opcode 'CONV_2D' version '7'."
    assert _quiet_start.kept_lines("\n".join([notice, error])) == [error]


def test_filtering_follows_tf_cpp_min_log_level(monkeypatch):
    for value, expected in (("2", True), ("3", True), ("0", False), ("1", False), ("x", False)):
        monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", value)
        assert _quiet_start.filtering() is expected, value


def test_import_prints_nothing_in_a_fresh_process():
    environment = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    result = subprocess.run([sys.executable, "-c", "import caps_zoo; print('ok')"],
                            capture_output=True, text=True, env=environment, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ok\n"
    assert result.stderr == ""
