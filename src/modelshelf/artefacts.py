"""Artefact bytes: sha256, atomic writes, and verify-before-deserialise loading."""

from __future__ import annotations

import importlib
import json
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, TYPE_CHECKING, Any

from modelshelf.errors import IntegrityError, VersionMismatchError

if TYPE_CHECKING:  # pathlib is imported where it is used: it brings urllib.parse and ipaddress
    from pathlib import Path  # (~3 ms), and `shelf serve` is timed from spawn to its first answer

_CHUNK = 1 << 20
# Python's own SHA-256 (module _sha2 from 3.12, _sha256 before) loads in ~0.2 ms; hashlib's,
# from OpenSSL, takes ~3.5 ms to load but hashes ~5x faster.  A server's start-up verifies a
# small file or two, so up to this size the built-in one is quicker.  Same algorithm, same digest.
_BUILTIN_SHA256_MAX = 4 << 20


def _sha256(size: int) -> Any:
    """A new SHA-256 hash object, the quickest to get for ``size`` bytes of input."""
    if size <= _BUILTIN_SHA256_MAX:
        for name in ("_sha2", "_sha256"):
            try:
                return importlib.import_module(name).sha256()
            except (ImportError, AttributeError):
                continue
    import hashlib

    return hashlib.sha256()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def sha256_file(path: str | Path) -> str:
    with open(path, "rb") as fh:
        h = _sha256(os.fstat(fh.fileno()).st_size)
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    h = _sha256(len(data))
    h.update(data)
    return str(h.hexdigest())


@contextmanager
def atomic_output(path: str | Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temp file beside ``path``; on success fsync and rename it into place.

    On any error the temp file is removed and ``path`` is left as it was.
    """
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    import tempfile  # not at module level: the server's start-up needs only the readers

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates 0600; give the file the mode a plain open() would (or the old file's).
        os.fchmod(fd, path.stat().st_mode & 0o777 if path.exists() else 0o666 & ~_umask())
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    text = json.dumps(data, indent=2, sort_keys=False, allow_nan=True) + "\n"
    with atomic_output(path, "w") as fh:
        fh.write(text)


def dump_joblib(obj: Any, path: str | Path, compress: int = 3) -> None:
    """``joblib.dump`` to a temp file, then rename: never a half-written model."""
    import joblib

    with atomic_output(path, "wb") as fh:
        joblib.dump(obj, fh, compress=compress)


def copy_verified(src: str | Path, dst: str | Path, expected_sha256: str) -> None:
    """Copy ``src`` to ``dst`` atomically, checking the bytes written hash to ``expected_sha256``."""
    with open(src, "rb") as fin, atomic_output(dst, "wb") as fout:
        h = _sha256(os.fstat(fin.fileno()).st_size)
        while chunk := fin.read(_CHUNK):
            h.update(chunk)
            fout.write(chunk)
        if h.hexdigest() != expected_sha256:
            raise IntegrityError(str(src), f"sha256 {h.hexdigest()[:12]}… does not match the recorded "
                                 f"{expected_sha256[:12]}…; not copied",
                                 "rerun `dvc repro` to rebuild it")


def verify(path: str | Path, expected_sha256: str, label: str = "") -> None:
    """Raise IntegrityError unless ``path`` exists and hashes to ``expected_sha256``."""
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise IntegrityError(str(path), "artefact is missing",
                             "run `dvc pull` (or `dvc repro`) to restore it")
    _check_digest(path, sha256_file(path), expected_sha256, label)


def _check_digest(path: Path, actual: str, expected_sha256: str, label: str) -> None:
    if actual != expected_sha256:
        raise IntegrityError(
            str(path),
            f"sha256 {actual[:12]}… does not match {label or 'the recorded'} {expected_sha256[:12]}…; "
            "refusing to deserialise it",
            "restore the file with `dvc checkout` or `dvc pull`, never load it as it is")


def load_verified(path: str | Path, expected_sha256: str, *, sklearn_version: str | None = None,
                  allow_version_mismatch: bool = False, label: str = "") -> Any:
    """Verify ``path`` against ``expected_sha256``, then (and only then) ``joblib.load`` it.

    When ``sklearn_version`` is given and differs from the running scikit-learn,
    refuse unless ``allow_version_mismatch``; scikit-learn's own
    InconsistentVersionWarning is an error too.
    """
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        verify(path, expected_sha256, label)  # raises: missing
    # Hash and unpickle the same bytes, read once: a file swapped after the check is never loaded.
    data = path.read_bytes()
    _check_digest(path, sha256_bytes(data), expected_sha256, label)
    import io

    import joblib
    import sklearn
    from sklearn.exceptions import InconsistentVersionWarning

    if sklearn_version and sklearn_version != sklearn.__version__ and not allow_version_mismatch:
        raise VersionMismatchError(
            str(path),
            f"built with scikit-learn {sklearn_version} but {sklearn.__version__} is installed",
            f"install scikit-learn=={sklearn_version} (e.g. `pip install scikit-learn=={sklearn_version}`) "
            "or pass allow_version_mismatch=True / --allow-version-mismatch")
    with warnings.catch_warnings():
        action = "ignore" if allow_version_mismatch else "error"
        warnings.simplefilter(action, InconsistentVersionWarning)  # type: ignore[arg-type]
        try:
            return joblib.load(io.BytesIO(data))
        except InconsistentVersionWarning as exc:
            raise VersionMismatchError(
                str(path), f"pickled by scikit-learn {exc.original_sklearn_version}, "
                f"running {exc.current_sklearn_version}",
                f"install scikit-learn=={exc.original_sklearn_version}") from None


def file_record(path: str | Path, root: str | Path | None = None) -> dict[str, Any]:
    """``{file, sha256, bytes}`` for the card; ``file`` relative to ``root``."""
    from pathlib import Path

    path = Path(path)
    name = path.name if root is None else os.path.relpath(path, root)
    return {"file": Path(name).as_posix(), "sha256": sha256_file(path), "bytes": path.stat().st_size}


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` atomically."""
    with atomic_output(path, "w") as fh:
        fh.write(text)
