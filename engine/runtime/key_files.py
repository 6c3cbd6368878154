"""A random key kept in a file under the engine's home, for settings that may be left unset in dev.

Several processes (the worker and the API of `playbook dev`, or API processes on one host) may start at once:
whichever comes first creates the file, atomically, and everyone reads that one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)


def key_file(path: Path) -> bytes:
    """The key in path, created atomically (and readable by this user only) by whichever process comes first.
    Raises OSError when the file cannot be made or holds no usable key."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-")  # mode 0600
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_hex(32).encode())
            with contextlib.suppress(FileExistsError):  # another process linked its key first: theirs wins
                os.link(tmp, path)
        finally:
            os.unlink(tmp)
    key = path.read_bytes().strip()
    if len(key) < 32:
        raise OSError(f"{path} holds no usable key")
    return key


def secret_or_key_file(configured: str, env_name: str, key_path: Path, if_lost: str) -> bytes:
    """A secret from its setting when set (warned about when short), else the key kept in key_path, else (the file
    cannot be kept) a key for this process only, with a warning that says what that breaks (``if_lost``)."""
    if configured:
        if len(configured) < 32:
            log.warning("%s is shorter than 32 characters: use a long random value", env_name)
        return configured.encode()
    try:
        return key_file(key_path)
    except OSError as err:
        log.warning("cannot keep a key in %s (%s): %s", key_path, err, if_lost)
        return secrets.token_bytes(32)
