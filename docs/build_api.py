"""Build the API reference (HTML) from the docstrings, with pdoc.

    python -m pip install -e ".[docs]" && python docs/build_api.py     # writes docs/api/index.html

Every public module of the package is documented (a module or package whose
name starts with ``_`` is private). ``caps_zoo/__init__``'s ``__all__``
names the top-level API; pdoc would stop at it, so the modules are listed
here instead. Any warning pdoc raises (a module that fails to import, a
docstring it cannot parse, a reference to an object that does not exist)
fails the build: ``tests/test_docs.py`` builds it, so the reference stays
complete.
"""

import argparse
import os
import pkgutil
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = ROOT / "docs" / "api"


def public_modules():
    """``caps_zoo``, ``caps_zoo_options`` and every submodule of theirs whose
    dotted name has no ``_`` part."""
    import caps_zoo
    import caps_zoo_options

    names = []
    for package in (caps_zoo, caps_zoo_options):
        names.append(package.__name__)
        for module in pkgutil.walk_packages(package.__path__, prefix=f"{package.__name__}."):
            if not any(part.startswith("_") for part in module.name.split(".")):
                names.append(module.name)
    return sorted(names)


def build(output_directory=DEFAULT_OUTPUT):
    """Write the reference into ``output_directory``; returns pdoc's warnings
    (as strings) and raises ``RuntimeError`` if there are any."""
    # pdoc blocks subprocesses while importing; platform.processor() (run at
    # TensorFlow's import) needs one: allowed, it changes nothing.
    os.environ.setdefault("PDOC_ALLOW_EXEC", "1")
    import pdoc
    import pdoc.extract

    pdoc.render.configure(docformat="google", show_source=True,
                          footer_text="caps_zoo API reference (built by docs/build_api.py)")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # A package's spec brings the submodules its __all__ names; a module
        # named twice would warn, so each spec adds only what is not in yet.
        specs, covered = [], set()
        for name in public_modules():
            if name not in covered:
                specs.append(name)
                covered.update(pdoc.extract.walk_specs([name]))
        pdoc.pdoc(*specs, output_directory=Path(output_directory))
    problems = [f"{w.category.__name__}: {w.message}" for w in caught
                if "pdoc" in (w.filename or "") or issubclass(w.category, UserWarning)]
    if problems:
        raise RuntimeError("the API reference has problems:\n  " + "\n  ".join(problems))
    return problems


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default=str(DEFAULT_OUTPUT),
                        help=f"where the HTML goes (default: {DEFAULT_OUTPUT.relative_to(ROOT)})")
    args = parser.parse_args(argv)
    try:
        build(args.output_dir)
    except RuntimeError as error:
        sys.exit(str(error))
    print(f"wrote {Path(args.output_dir) / 'index.html'} ({len(public_modules())} modules)")


if __name__ == "__main__":
    main()
