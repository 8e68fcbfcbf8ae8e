"""Every path a run reads or writes: a POSIX path, ``gs://bucket/...`` or ``s3://bucket/...``.

``path(p)`` is the one constructor: a ``pathlib.Path`` for a local path (so a local run behaves
exactly as before), an ``etils.epath.Path`` for an object-store URL (the library Orbax itself
uses; fsspec's ``gcsfs`` / ``s3fs`` underneath). Both have the pathlib methods the project uses
(``/``, ``exists``, ``is_file``, ``read_text``, ``write_bytes``, ``iterdir``, ``glob``, ...).

Writes (``write_text`` / ``write_bytes``; ``atomic_file`` for a local file written piece by
piece) are atomic: on POSIX a temporary file in the same
directory, fsynced and renamed over the target; on an object store one object put (an object
appears whole or not at all). Object stores cannot append or rename a directory: ``append_text``
rewrites the object; a directory such as an exported agent is written locally and uploaded
(``upload_tree``) with its completion marker last.

Which process writes what (the rule lives here, ``is_writer``):

* process 0: reports, routing logs, metrics, labels, SFT targets, assessments, DONE markers,
  exported agents, the toy pool; the other processes wait at a barrier where they need the file;
* every process: its own Orbax checkpoint shards (Orbax coordinates them itself).

Reading from an object store a directory that a library needs on local disk (an agent's
safetensors, config and tokenizer files, the toy pool) goes through ``local_dir``: a local cache
under ``$DISROUTER_CACHE_DIR`` (default ``~/.cache/disrouter_jax``), refreshed file by file when
an object's size or checksum changes. No local path is ever named after a URL.

Failures of the store (unreachable, refused) raise ``StorageError`` naming the URL and the
operation.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import pathlib
import secrets
import shutil
from typing import IO, Any, Iterable, Iterator, Union

logger = logging.getLogger(__name__)

URL_SCHEMES = ("gs", "s3")
CACHE_ENV = "DISROUTER_CACHE_DIR"
_CACHE_INDEX = ".disrouter-cache.json"

AnyPath = Union[pathlib.Path, Any]  # pathlib.Path or etils.epath.Path


class StorageError(OSError):
    """An object-store operation failed; the message names the URL and the operation."""


def is_url(p: Any) -> bool:
    text = str(p) if not isinstance(p, str) else p
    return any(text.startswith(f"{scheme}://") for scheme in URL_SCHEMES)


def path(p: Any) -> AnyPath:
    """``p`` as a path object: ``pathlib.Path`` (local) or ``epath.Path`` (``gs://``, ``s3://``)."""
    if p is None:
        raise TypeError("storage.path(None): no path given")
    if not isinstance(p, (str, os.PathLike)):
        raise TypeError(f"storage.path({p!r}): expected a str or path, got {type(p).__name__}")
    text = os.fspath(p) if not _is_epath(p) else str(p)
    if is_url(text):
        from etils import epath

        _configure_fsspec()
        return p if _is_epath(p) else epath.Path(text)
    for scheme in URL_SCHEMES:
        if text.startswith(f"{scheme}:/") and not text.startswith(f"{scheme}://"):
            # pathlib.Path("gs://b/x") is "gs:/b/x": a URL that lost a slash would become a local directory.
            raise ValueError(f"{text!r}: looks like a {scheme}:// URL that went through pathlib; "
                             f"pass the URL as a string ({scheme}://bucket/...)")
    return pathlib.Path(text)


def _is_epath(p: Any) -> bool:
    return type(p).__module__.startswith("etils.")


def join(base: Any, *parts: str) -> AnyPath:
    out = path(base)
    for part in parts:
        out = out / part
    return out


def is_writer() -> bool:
    """Whether this process writes the run's shared files (process 0; see the module docstring)."""
    import jax

    return jax.process_index() == 0


_BARRIER_COUNTS: dict[str, int] = {}


def barrier(name: str, *, timeout_s: int = 600) -> None:
    """All processes wait here (a no-op on one process): e.g. until process 0 has written a file.
    Every process passes the same barriers in the same order, so the n-th use of ``name`` gets
    the same id everywhere (the coordination service refuses a reused id)."""
    import jax

    if jax.process_count() > 1:
        from disrouter_jax.distributed import work

        count = _BARRIER_COUNTS[name] = _BARRIER_COUNTS.get(name, 0) + 1
        work.barrier(f"{name}#{count}", timeout_s=timeout_s)


# ----------------------------------------------------------------------------------- writing


@contextlib.contextmanager
def replacing(p: Any) -> Iterator[pathlib.Path]:
    """A fresh temporary path beside local ``p`` that is renamed over ``p`` when the block
    completes and removed when it raises, so ``p`` is always the old file or the whole new one.

    The one write-then-rename in the project (``atomic_file``, ``write_bytes``, the download
    cache); the file is created as ``open`` would (permissions from the umask), and the name is
    unique, so concurrent writers of one target never share a temporary file.
    """
    target = pathlib.Path(p)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_file(p: Any, mode: str = "wb", encoding: str | None = None) -> Iterator[IO]:
    """An open file (``mode`` "wb" or "w") whose content replaces local ``p`` once the block
    completes, fsynced first (see :func:`replacing`): for files written piece by piece."""
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_file: mode must be 'wb' or 'w', got {mode!r}")
    with replacing(p) as tmp, open(tmp, mode, encoding=encoding) as handle:
        yield handle
        handle.flush()
        os.fsync(handle.fileno())


def write_bytes(p: Any, data: bytes) -> AnyPath:
    """Writes ``data`` to ``p`` atomically (see the module docstring); parents are created."""
    target = path(p)
    if is_url(target):
        with _store_errors(target, "write"):
            target.write_bytes(data)
        return target
    with atomic_file(target) as handle:
        handle.write(data)
    return target


def write_text(p: Any, text: str, encoding: str = "utf-8") -> AnyPath:
    return write_bytes(p, text.encode(encoding))


def append_text(p: Any, text: str, encoding: str = "utf-8") -> None:
    """Appends ``text``: on POSIX one append + fsync; on an object store the object is rewritten
    (stores have no append), so keep appended files small (logs, metrics)."""
    target = path(p)
    if is_url(target):
        with _store_errors(target, "append"):
            old = target.read_bytes() if target.exists() else b""
            target.write_bytes(old + text.encode(encoding))
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "a", encoding=encoding) as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def read_text(p: Any, encoding: str = "utf-8") -> str:
    target = path(p)
    with _store_errors(target, "read"):
        return target.read_text(encoding=encoding)


def rmtree(p: Any) -> None:
    """Deletes a directory tree (missing: nothing to do)."""
    target = path(p)
    if is_url(target):
        with _store_errors(target, "delete"):
            fs, root = _fs(target)
            if fs.exists(root):
                fs.rm(root, recursive=True)
        return
    if target.exists():
        shutil.rmtree(target)


def exists(p: Any) -> bool:
    target = path(p)
    with _store_errors(target, "stat"):
        return target.exists()


# ------------------------------------------------------------------------- trees and caches


def upload_tree(local: Any, dest: Any, *, last: Iterable[str] = ()) -> AnyPath:
    """Copies the local directory ``local`` to ``dest`` (a URL or a local path), every file one
    object put; the files named in ``last`` (relative paths, e.g. a completion record) go last,
    so a reader that sees them sees the rest. Objects under ``dest`` that ``local`` lacks are
    deleted first."""
    local, target = pathlib.Path(local), path(dest)
    files = sorted(str(f.relative_to(local)) for f in local.rglob("*") if f.is_file() and f.name != _CACHE_INDEX)
    last = [name for name in last if name in files]
    order = [f for f in files if f not in last] + last
    if not is_url(target):
        raise ValueError(f"upload_tree({target}): not an object-store URL; copy local trees with shutil")
    with _store_errors(target, "upload"):
        fs, root = _fs(target)
        if fs.exists(root):
            stale = {_relative(f, root) for f in fs.find(root)} - set(files)
            for name in sorted(stale):
                fs.rm(f"{root}/{name}")
        for name in order:
            fs.put_file(str(local / name), f"{root}/{name}")
    return target


def copy_tree(src: Any, dest: Any) -> AnyPath:
    """``src`` (local or URL) copied to ``dest`` (local or URL), replacing what was there."""
    src_local = local_dir(src) if is_url(src) else pathlib.Path(src)
    if is_url(dest):
        return upload_tree(src_local, dest)
    dest = pathlib.Path(dest)
    tmp = dest.with_name(dest.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(src_local, tmp)
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    return dest


def cache_root() -> pathlib.Path:
    return pathlib.Path(os.environ.get(CACHE_ENV) or pathlib.Path.home() / ".cache" / "disrouter_jax")


def cache_dir_for(url: Any) -> pathlib.Path:
    """The local cache directory of ``url`` (created): ``cache_root()/objects/<sha256 of the URL>``."""
    local = cache_root() / "objects" / hashlib.sha256(str(url).rstrip("/").encode()).hexdigest()[:32]
    local.mkdir(parents=True, exist_ok=True)
    return local


def local_dir(p: Any) -> pathlib.Path:
    """A local directory with the files of ``p``: ``p`` itself when local; for a URL, its copy in
    the local cache (``cache_root()/objects/<sha256 of the URL>``), downloading only the objects
    whose size or checksum changed since the last copy. Concurrent processes may share the cache:
    each file is downloaded to a temporary name and renamed."""
    target = path(p)
    if not is_url(target):
        return target
    url = str(target).rstrip("/")
    local = cache_dir_for(url)
    index_path = local / _CACHE_INDEX
    try:
        index = json.loads(index_path.read_text())["files"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError):
        index = {}
    with _store_errors(target, "download"):
        fs, root = _fs(target)
        remote = fs.find(root, detail=True)
        if not remote:
            raise FileNotFoundError(f"{url}: no objects under this URL")
        fresh = {}
        for key, info in sorted(remote.items()):
            name = _relative(key, root)
            stamp = [info.get("size"), info.get("crc32c") or info.get("md5Hash") or info.get("ETag")
                     or str(info.get("updated") or info.get("LastModified") or "")]
            fresh[name] = stamp
            dest = local / name
            if index.get(name) == stamp and dest.is_file():
                continue
            with replacing(dest) as tmp:
                fs.get_file(key, str(tmp))
    for name in set(index) - set(fresh):
        stale = local / name
        if stale.is_file():
            stale.unlink()
    write_text(index_path, json.dumps({"url": url, "files": fresh}, indent=1))
    return local


def _configure_fsspec() -> None:
    """No listing cache: another process (another host) writes the same bucket, and a cached
    listing would hide its files (or show deleted ones)."""
    import fsspec.config

    for protocol in ("gcs", "s3"):
        fsspec.config.conf.setdefault(protocol, {}).setdefault("use_listings_cache", False)


def _fs(target: AnyPath):
    import fsspec

    _configure_fsspec()
    fs, root = fsspec.core.url_to_fs(str(target))
    return fs, root.rstrip("/")


def _relative(key: str, root: str) -> str:
    key = key.split("://", 1)[-1]
    return key[len(root):].lstrip("/")


class _store_errors:
    """Re-raises a failure of an object-store call as ``StorageError`` naming the URL (a local
    path's errors pass through unchanged)."""

    def __init__(self, target: AnyPath, operation: str):
        self.target, self.operation = target, operation

    def __enter__(self):
        return self

    def __exit__(self, kind, err, tb):
        if err is None or not is_url(self.target) or isinstance(err, (StorageError, FileNotFoundError,
                                                                       FileExistsError, KeyboardInterrupt)):
            return False
        if isinstance(err, Exception):
            raise StorageError(f"{self.target}: object-store {self.operation} failed "
                               f"({type(err).__name__}: {err}); is the store reachable?") from err
        return False
