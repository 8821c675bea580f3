"""`import caps_zoo` is silent: TensorFlow's start-up notices are filtered
(caps_zoo._quiet_start), its errors are not, whichever caps_zoo module
imports TensorFlow first (caps_zoo._quiet_tensorflow)."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

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


# ``import caps_zoo`` imports no TensorFlow (issue 15): these are the ways
# TensorFlow gets imported first, each in a fresh process.
FIRST_IMPORTS = [
    "import caps_zoo; assert 'capsnet' in caps_zoo.list_models()",
    "from caps_zoo.layers import PrimaryCaps",
    "import caps_zoo.training",
    "from caps_zoo.registry import get_spec; get_spec('gran1')",  # the registry fills itself
]


@pytest.mark.parametrize("code", FIRST_IMPORTS)
def test_import_prints_nothing_in_a_fresh_process(code):
    environment = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    result = subprocess.run([sys.executable, "-c", f"{code}; import tensorflow; print('ok')"],
                            capture_output=True, text=True, env=environment, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ok\n"
    assert result.stderr == ""


PACKAGE = Path(_quiet_start.__file__).resolve().parent
QUIET = "caps_zoo._quiet_tensorflow"


def _imports(path):
    """``(line, module)`` of every import in the file: statements (at any
    depth; ``from a import b`` gives ``a`` and ``a.b``) and ``__import__("x")``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found += [(node.lineno, node.module)]
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "__import__"
              and node.args and isinstance(node.args[0], ast.Constant)):
            found.append((node.lineno, node.args[0].value))
    return sorted(found)


def _first_line(imports, test):
    return min((line for line, name in imports if test(name)), default=None)


def _quiet_first(path, before):
    """Whether ``path`` imports the quiet start before every import ``before`` accepts."""
    imports = _imports(path)
    quiet = _first_line(imports, lambda name: name == QUIET)
    first = _first_line(imports, lambda name: name != QUIET and before(name))
    return quiet is not None and (first is None or quiet <= first)


def _tensorflow(name):
    return name.split(".")[0] in ("tensorflow", "keras")


def test_every_module_that_imports_tensorflow_starts_it_quietly_first():
    """The rule of caps_zoo._quiet_tensorflow: a module that imports tensorflow
    or keras imports it first, or sits in a subpackage whose __init__ imports
    it before anything else of the zoo (its submodules run after it)."""
    def covered_by_package(folder):
        init = folder / "__init__.py"
        return _quiet_first(init, lambda name: _tensorflow(name) or name.startswith("caps_zoo."))

    unquiet = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.parent == PACKAGE and path.stem in ("_quiet_start", "_quiet_tensorflow"):
            continue
        if _first_line(_imports(path), _tensorflow) is None or _quiet_first(path, _tensorflow):
            continue
        folder = path.parent if path.name != "__init__.py" else path.parent.parent
        packages = [folder, *folder.parents]
        if not any(covered_by_package(package) for package in packages[:packages.index(PACKAGE)]):
            unquiet.append(str(path.relative_to(PACKAGE.parent)))
    assert not unquiet, f"import {QUIET} first (one line, see its docstring) in: {unquiet}"
    # The package's own __init__ imports none: `import caps_zoo` costs no TensorFlow.
    assert _first_line(_imports(PACKAGE / "__init__.py"), _tensorflow) is None
