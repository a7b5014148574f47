"""Files the CLI writes for an operator: private (0600) and all or nothing."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from spawnflow.exceptions import PersistenceError


def write_private(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` readable by its owner only (0600), all or nothing.

    An export or a timeline holds a build's spec, errors and host layout. The
    bytes go to a new file made by ``mkstemp`` beside ``path``
    (O_CREAT|O_EXCL|O_NOFOLLOW, mode 0600, an unguessable name: no symlink
    planted in advance is followed), which then replaces ``path`` by rename. A
    rename replaces a symlink at ``path`` itself, so the file a link points to
    is never written.
    """
    target = Path(path)
    tmp: Path | None = None
    try:
        fd, name = tempfile.mkstemp(
            # normpath: "a/../b" needs no directory "a", as the kernel would.
            dir=Path(os.path.normpath(target.absolute())).parent,
            prefix=f".{target.name}.",
            suffix=".tmp",
        )
        tmp = Path(name)
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), 0o600)  # mkstemp's mode, made explicit
            out.write(data)
        tmp.replace(target)
    except OSError as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink()
        raise PersistenceError(f"cannot write {path}: {exc.strerror or exc}") from None
