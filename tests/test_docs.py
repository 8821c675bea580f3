"""The API reference builds from the docstrings, complete and without warnings."""

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("pdoc")

BUILD = Path(__file__).resolve().parent.parent / "docs" / "build_api.py"


def test_api_reference_builds_without_warnings_and_covers_every_public_module(tmp_path):
    # A fresh process, as the README's command runs it (pdoc imports everything).
    result = subprocess.run([sys.executable, str(BUILD), "--output-dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    import runpy

    modules = runpy.run_path(str(BUILD))["public_modules"]()
    assert {"caps_zoo.training", "caps_zoo.registry", "caps_zoo.layers.capsule", "caps_zoo.models.base"} <= set(modules)
    assert not [name for name in modules if any(part.startswith("_") for part in name.split("."))]
    missing = [name for name in modules if not (tmp_path / (name.replace(".", "/") + ".html")).is_file()]
    assert not missing, missing
    # Docstrings reach the pages: the registry's load() is documented there.
    page = (tmp_path / "caps_zoo" / "registry.html").read_text()
    assert "def load" in page or "load(" in page


def test_a_warning_fails_the_build(monkeypatch, tmp_path):
    import runpy
    import warnings

    build = runpy.run_path(str(BUILD))
    pdoc = pytest.importorskip("pdoc")

    def warning_pdoc(*modules, output_directory):
        warnings.warn("Cannot find spec for caps_zoo.missing")

    monkeypatch.setattr(pdoc, "pdoc", warning_pdoc)
    with pytest.raises(RuntimeError, match="Cannot find spec for caps_zoo.missing"):
        build["build"](tmp_path)
