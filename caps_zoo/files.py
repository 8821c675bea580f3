"""File helpers every writer and checker of the zoo shares: one way to hash
a file, one way to replace a file so that no reader sees half of it."""

import hashlib
import json
import os
from pathlib import Path


def sha256_of(path):
    """The SHA-256 of the file at ``path``, as hex (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_of_bytes(content):
    """The SHA-256 of bytes already read (a file read once, then checked)."""
    return hashlib.sha256(content).hexdigest()


def write_text_atomically(path, text):
    """Write ``path`` through a temporary beside it and a rename: a reader
    (ship_weights, a restart, a download check) never sees a half-written file."""
    path = Path(path)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def write_json_atomically(path, record, indent=2):
    write_text_atomically(path, json.dumps(record, indent=indent) + "\n")
