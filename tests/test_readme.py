"""The README's Python snippets run as written.

A ``python`` block preceded by ``<!-- runs in tests/test_readme.py -->`` is
executed here, in a fresh namespace and an empty working directory (the
files it writes land there). ``(with the block above)`` runs it after the
marked block before it, in one namespace, as a reader would; ``(slow)``
puts it in the ``-m slow`` run (training steps, exports). A marker left
without its block, or a block whose marker is misspelt, fails the
collection check, so no snippet silently stops being run.
"""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
MARKER = re.compile(r"<!-- runs in tests/test_readme\.py(?: \((?P<options>[^)]*)\))? -->")
OPTIONS = {"slow", "with the block above"}


def marked_snippets(text):
    """``[(line, code, slow)]``: each marked block's code (with the blocks it
    continues), the README line of its marker."""
    lines = text.splitlines()
    snippets, previous = [], None
    for index, line in enumerate(lines):
        match = MARKER.fullmatch(line.strip())
        if not match:
            if "tests/test_readme.py" in line and line.lstrip().startswith("<!--"):
                raise ValueError(f"README line {index + 1}: a marker this test cannot read: {line!r}")
            continue
        options = {o.strip() for o in (match["options"] or "").split(",") if o.strip()}
        if options - OPTIONS:
            raise ValueError(f"README line {index + 1}: unknown options {sorted(options - OPTIONS)}")
        if index + 1 >= len(lines) or lines[index + 1].strip() != "```python":
            raise ValueError(f"README line {index + 1}: the marker is not followed by a ```python block")
        end = next(i for i in range(index + 2, len(lines)) if lines[i].strip() == "```")
        code = "\n".join(lines[index + 2:end]) + "\n"
        if "with the block above" in options:
            if previous is None:
                raise ValueError(f"README line {index + 1}: 'with the block above', but no block is above")
            code = previous + code
        previous = code
        snippets.append((index + 1, code, "slow" in options))
    return snippets


SNIPPETS = marked_snippets(README.read_text())


def test_the_readme_has_marked_snippets_and_each_is_real_python():
    assert len(SNIPPETS) >= 6
    for line, code, _ in SNIPPETS:
        compile(code, f"README.md:{line}", "exec")


@pytest.mark.parametrize("code", [
    pytest.param(code, id=f"line-{line}", marks=[pytest.mark.slow] if slow else [])
    for line, code, slow in SNIPPETS])
def test_readme_snippet_runs(code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {"__name__": "readme_snippet"})
