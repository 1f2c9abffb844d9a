"""The reference side of the similarity measurement, computed once and kept on disk.

The reference model's output on the evaluation text depends only on the model, the text, the
window plan, the dtype and the library versions, yet it was half of every similarity run.
Like llama.cpp's ``--kl-divergence-base`` file, a :class:`ReferenceStore` keeps it in the
session's cache dir (through :class:`~pytest_llmquant.models.cache.ModelCache`: built once under
a file lock, published atomically, every file checksummed on every read, a corrupt entry
rebuilt with one warning), so a warm run only runs the INT8 model. The stored form itself is :mod:`.stored`.

What is stored for each scored token, and why it is exact enough:

* the reference log-probabilities over the whole vocabulary in 16 bits, ``base + step *
  code`` with a per-token float64 step (the row's range / 65534) and base (which makes
  the decoded row sum to 1), code 0 for ``-inf``. Unlike llama.cpp no entry is cut off below
  ``log p = -16``: the range is the full one, so every entry is within half a step
  (SmolLM2's rows span 27-52 nats: steps of 4e-4 to 8e-4) of its float64 value. They
  only feed KLD, after renormalisation: a rounding error ``e`` moves ``KL(p' || q)``
  away from ``KL(p || q)`` by ``sum p e (log p - log q)`` (random signs, weighted by
  the small log-ratio) plus ``~Var_p(e) / 2`` (~1e-8). Measured on SmolLM2 with
  weight-only INT8: mean KLD 0.00111438 from the stored form against 0.00111433
  directly, 0.004% of the value and 0.2% of its standard error (a slow test checks it).
* exact float64 side data where 16 bits would bias a statistic: the target token's
  log-prob (PPL, Δp) and the argmax (same top, int64);
* the target ids, checked against the text on every read;
* separately, the reference's greedy continuations of the greedy-match prompts.

Statistics are computed from this stored form on cold runs too, so a cold and a warm run
give identical numbers. 2 bytes x vocabulary per scored token: 201 MB for 2,048
tokens of SmolLM2 (a 49,152-token vocabulary), one entry per model, text, token count,
window plan, dtype and device.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..sides.torch_side import TorchSide
from .stored import (
    StoredReference,
    decode_log_probs,
    encode_log_probs,
    read_reference,
    write_reference,
)
from .windows import Window

if TYPE_CHECKING:
    from ..models.cache import ModelCache
    from ..models.sources import ModelSource
    from ..sides.base import ModelSide
    from ..types import CausalLM, JSONValue

__all__ = [
    "GREEDY_NAMESPACE",
    "KLD_NAMESPACE",
    "ReferenceStore",
    "StoredReference",
    "decode_log_probs",
    "encode_log_probs",
    "prune_orphans",
    "read_reference",
    "source_fingerprint",
    "write_reference",
]

#: Bump when what is stored, or how, changes: old entries then stop matching.
FORMAT = 1
KLD_NAMESPACE = "similarity-reference"
GREEDY_NAMESPACE = "similarity-greedy"
_GREEDY = "greedy.json"


#: a cache key part: what JSON can say, digested sorted
_Key = dict[str, "JSONValue"]


def _digest(data: bytes | _Key) -> str:
    if isinstance(data, bytes):
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def source_fingerprint(
    source: ModelSource, model: CausalLM | ModelSide | None
) -> dict[str, JSONValue] | None:
    """What identifies the reference weights of ``source`` on disk, or None if nothing does.

    A .gguf file: its path, size and mtime (as the reference weights cache uses); a
    directory: its path and the size and mtime of each file in it; a hub model: the
    commit transformers loaded (``config._commit_hash`` of ``model``, the loaded module or
    its :class:`~pytest_llmquant.sides.torch_side.TorchSide`), None when it does not say
    (no reference is kept then). A path lets :func:`prune_orphans` find entries whose
    model is gone.
    """
    if source.kind == "gguf":
        st = os.stat(source.location)
        return {"path": source.location, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if source.kind == "dir":
        files: dict[str, JSONValue] = {}
        for path in sorted(Path(source.location).iterdir()):
            if path.is_file():
                st = path.stat()
                files[path.name] = [st.st_size, st.st_mtime_ns]
        return {"path": source.location, "files": files}
    if isinstance(model, TorchSide):
        model = model.model
    commit = getattr(getattr(model, "config", None), "_commit_hash", None)
    return {"hub_commit": commit} if isinstance(commit, str) and commit else None


def _source_still_exists(manifest: Mapping[str, object]) -> bool:
    fingerprint = manifest.get("fingerprint")
    path = fingerprint.get("path") if isinstance(fingerprint, dict) else None
    return not isinstance(path, str) or os.path.exists(path)


def prune_orphans(cache: ModelCache) -> int:
    """Delete stored references of model files and directories that are gone (a test's
    temporary model, a deleted download): nothing can ever hit them again."""
    return sum(
        cache.prune(namespace, _source_still_exists)
        for namespace in (KLD_NAMESPACE, GREEDY_NAMESPACE)
    )


def _greedy_fits(tokens: object, n_prompts: int, new_tokens: int) -> bool:
    """Whether stored continuations are ``n_prompts`` lists of ``new_tokens`` ids."""
    return (
        isinstance(tokens, list)
        and len(tokens) == n_prompts
        and all(
            isinstance(t, list) and len(t) == new_tokens and all(isinstance(x, int) for x in t)
            for t in tokens
        )
    )


class ReferenceStore:
    """Reference outputs of one model source, kept in a :class:`ModelCache`.

    ``source`` names the model (a path or hub id) and ``fingerprint`` says which
    version of it (see :func:`source_fingerprint`). Entries are keyed by the source,
    the evaluation text's SHA-256 and its token ids, the scored token count, the window
    plan, the reference side's dtype and device type; the fingerprint and the
    torch/transformers versions must match too, or the entry is rebuilt.
    """

    def __init__(
        self,
        cache: ModelCache,
        source: str,
        fingerprint: dict[str, JSONValue],
        *,
        label: str | None = None,
    ) -> None:
        self.cache = cache
        self.source = source
        self.fingerprint = fingerprint
        self.label = label or source

    @classmethod
    def for_source(
        cls,
        cache: ModelCache,
        source: ModelSource,
        model: CausalLM | ModelSide | None,
        *,
        label: str | None = None,
    ) -> ReferenceStore | None:
        """The store for a resolved ``--llmq-model`` (``model``: what was loaded from it),
        or None when its version is unknown."""
        fingerprint = source_fingerprint(source, model)
        if fingerprint is None:
            return None
        return cls(cache, source.location, fingerprint, label=label or source.label)

    def _versions(self) -> dict[str, JSONValue]:
        from ..versions import library_versions

        return {**self.fingerprint, **library_versions(), "reference_format": FORMAT}

    def _identity(self, what: str, reference: ModelSide, key: _Key) -> str:
        # "cuda:0" -> "cuda": the key of entries stored before model sides, kept
        dtype, device = reference.dtype, reference.device.split(":")[0]
        key = {"source": self.source, "dtype": dtype, "device": device, **key}
        return f"{what} of {self.label} ({dtype} on {device}, key {_digest(key)[:16]})"

    def _build(self, write: Callable[..., None], *args: object) -> None:
        prune_orphans(self.cache)  # on a miss only: a hit costs nothing extra
        write(*args)

    def kld_reference(
        self,
        reference: ModelSide,
        ids: Sequence[int],
        plan: Sequence[Window],
        *,
        text_sha256: str,
        bos: int | None,
        progress: Callable[[str], None] | None = None,
    ) -> StoredReference:
        """The stored reference side of ``plan`` over ``ids``, computed first if not cached."""
        import numpy as np
        import torch

        all_ids = torch.tensor(list(ids), dtype=torch.long)
        n_tokens = sum(w.n_scored for w in plan)
        key: _Key = {
            "text_sha256": text_sha256,
            "ids_sha256": _digest(all_ids.numpy().astype("<i8").tobytes()),
            "n_tokens": n_tokens,
            "plan": [[w.start, w.stop, w.n_scored] for w in plan],
            "bos": bos,
        }
        what = f"similarity reference ({n_tokens} tokens, {len(plan)} windows)"
        identity = self._identity(what, reference, key)
        want = np.concatenate([all_ids[w.targets].numpy() for w in plan])
        for attempt in (1, 2):
            entry = self.cache.get_or_build(
                KLD_NAMESPACE,
                identity,
                self._versions(),
                lambda d: self._build(write_reference, d, reference, all_ids, plan, bos, progress),
            )
            try:
                stored = read_reference(entry)
                problem = None if np.array_equal(stored.targets, want) else "has other targets"
            except (OSError, ValueError, KeyError) as exc:
                problem = f"is unreadable ({type(exc).__name__})"
            if problem is None:
                return stored
            if attempt == 2:
                raise RuntimeError(f"{identity}: a freshly built reference {problem}")
            self.cache.discard(KLD_NAMESPACE, identity, problem)
        raise AssertionError("unreachable")  # pragma: no cover

    def greedy_tokens(
        self, reference: ModelSide, prompt_ids: Sequence[Sequence[int]], new_tokens: int
    ) -> list[list[int]]:
        """The reference side's greedy continuations of ``prompt_ids`` (the prompts
        encoded as :func:`~.greedy.encode_prompts` does), generated first if not cached."""
        prompts = [[int(i) for i in ids] for ids in prompt_ids]
        key: _Key = {"prompt_ids": [[*ids] for ids in prompts], "new_tokens": new_tokens}
        what = f"greedy reference ({len(prompts)} prompts x {new_tokens} tokens)"
        identity = self._identity(what, reference, key)

        def build(directory: Path) -> None:
            prune_orphans(self.cache)
            tokens = reference.greedy(prompts, new_tokens)
            (directory / _GREEDY).write_text(json.dumps({"tokens": tokens}), encoding="utf-8")

        for attempt in (1, 2):
            entry = self.cache.get_or_build(GREEDY_NAMESPACE, identity, self._versions(), build)
            try:
                tokens = json.loads((entry / _GREEDY).read_text(encoding="utf-8"))["tokens"]
                ok = _greedy_fits(tokens, len(prompts), new_tokens)
            except (OSError, ValueError, KeyError, TypeError):
                ok = False
            if ok:
                return [list(t) for t in tokens]
            if attempt == 2:
                raise RuntimeError(f"{identity}: freshly generated tokens do not fit")
            self.cache.discard(GREEDY_NAMESPACE, identity, "does not fit the prompts")
        raise AssertionError("unreachable")  # pragma: no cover
