"""A crash-safe, race-safe on-disk cache for converted model weights.

Why this shape:
- one entry per *source* (hashed, so no user string ever becomes a path: ``../../etc``
  cannot escape the cache dir), with a manifest holding the source's fingerprint
  (size, mtime, library versions) and a SHA-256 per file;
- an entry is built in a private temporary directory and published by one atomic
  ``rename``; a build killed half-way leaves only a ``*.build-*`` directory that no
  reader trusts and the next builder deletes;
- a file lock per entry means two xdist workers that both miss build it once: the
  second waits, then finds a valid entry;
- a corrupt, truncated or stale entry fails its manifest check, is rebuilt, and the
  user is warned once.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

MANIFEST = "llmq-cache.json"
FORMAT_VERSION = 1
_warned: set[str] = set()


class LlmqCacheWarning(UserWarning):
    """The cache could not be used as it was (rebuilt, or moved to a temporary dir)."""


def warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(LlmqCacheWarning(message), stacklevel=3)


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pytest-llmquant"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _writable(root: Path) -> bool:
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".probe-"):
            pass
        return True
    except OSError:
        return False


#: unwritable cache dir -> the temporary dir used instead, for the rest of the process
_fallback_roots: dict[Path, Path] = {}


def usable_cache_root(root: str | os.PathLike[str] | None = None) -> Path:
    """``root`` (default: the user cache) if it can be written, else a temporary dir.

    The temporary dir is made once per unwritable dir and process, and warned about
    once, so the model cache and the kernel build (``schemes.kernels``) share it and a
    read-only home costs one warning, not one per user of the cache."""
    wanted = Path(root).expanduser() if root else default_cache_dir()
    if _writable(wanted):
        return wanted.resolve()
    fallback = _fallback_roots.get(wanted)
    if fallback is None or not _writable(fallback):
        fallback = _fallback_roots[wanted] = Path(tempfile.mkdtemp(prefix="pytest-llmquant-cache-"))
        warn_once(
            f"cache dir {wanted} is not writable; using {fallback} for this session "
            "(pass a writable --llmq-cache-dir to keep the cache)"
        )
    return fallback


class ModelCache:
    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = usable_cache_root(root)
        self.hits = 0
        self.builds = 0

    def entry_path(self, namespace: str, identity: str) -> Path:
        digest = hashlib.sha256(f"{namespace}\0{identity}".encode()).hexdigest()[:32]
        return self.root / namespace / digest

    def _problem(self, entry: Path, fingerprint: Mapping[str, object]) -> str | None:
        """None when the entry is valid, else what is wrong with it."""
        try:
            manifest = json.loads((entry / MANIFEST).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return "missing" if not entry.exists() else "has no manifest"
        except (OSError, ValueError):
            return "has an unreadable manifest"
        if manifest.get("fingerprint") != fingerprint:
            return "is stale (the source or the library versions changed)"
        for name, want in manifest.get("files", {}).items():
            path = entry / name
            if not path.is_file() or path.stat().st_size != want["size"]:
                return f"is truncated ({name})"
            if sha256_file(path) != want["sha256"]:
                return f"is corrupt ({name} fails its checksum)"
        return None

    def get_or_build(
        self,
        namespace: str,
        identity: str,
        fingerprint: Mapping[str, object],
        build: Callable[[Path], None],
    ) -> Path:
        """Return a valid entry directory for ``identity``, building it at most once."""
        from filelock import FileLock

        fingerprint = {**fingerprint, "format": FORMAT_VERSION}
        entry = self.entry_path(namespace, identity)
        entry.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(entry) + ".lock"):
            problem = self._problem(entry, fingerprint)
            if problem is None:
                self.hits += 1
                return entry
            if problem != "missing":
                warn_once(f"cache entry for {identity} {problem}; rebuilding it")
            for leftover in entry.parent.glob(entry.name + ".build-*"):
                shutil.rmtree(leftover, ignore_errors=True)  # from a builder that died
            tmp = Path(tempfile.mkdtemp(dir=entry.parent, prefix=entry.name + ".build-"))
            try:
                build(tmp)
                files = {
                    p.name: {"size": p.stat().st_size, "sha256": sha256_file(p)}
                    for p in sorted(tmp.iterdir())
                    if p.is_file()
                }
                manifest = {"identity": identity, "fingerprint": fingerprint, "files": files}
                (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
                if entry.exists():
                    shutil.rmtree(entry)
                os.replace(tmp, entry)
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
            self.builds += 1
            return entry

    def discard(self, namespace: str, identity: str, problem: str) -> None:
        """Delete an entry whose files pass their checksums but whose content its reader
        rejects (say, a shape that does not fit), warning once; the next
        :meth:`get_or_build` builds it again."""
        from filelock import FileLock

        entry = self.entry_path(namespace, identity)
        with FileLock(str(entry) + ".lock"):
            warn_once(f"cache entry for {identity} {problem}; rebuilding it")
            shutil.rmtree(entry, ignore_errors=True)

    def prune(self, namespace: str, keep: Callable[[Mapping[str, object]], bool]) -> int:
        """Delete the entries of ``namespace`` whose manifest ``keep`` rejects (say, ones
        made from a model file that no longer exists); an entry being built or checked by
        another process (its lock held) is left alone, and lock files are kept (deleting
        one under a waiting process would let two hold "the" lock). Returns how many
        entries were deleted."""
        from filelock import FileLock, Timeout

        removed = 0
        folder = self.root / namespace
        if not folder.is_dir():
            return 0
        for manifest_path in folder.glob(f"*/{MANIFEST}"):
            entry = manifest_path.parent
            try:
                manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue  # get_or_build deals with broken entries of its own identity
            if keep(manifest):
                continue
            try:
                with FileLock(str(entry) + ".lock", timeout=0):
                    shutil.rmtree(entry, ignore_errors=True)
                removed += 1
            except Timeout:
                continue
        return removed
