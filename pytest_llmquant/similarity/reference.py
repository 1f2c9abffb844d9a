"""The FP32 side of the similarity measurement, computed once and kept on disk.

The FP32 model's output on the evaluation text depends only on the model, the text, the
window plan, the dtype and the library versions, yet it was half of every similarity run.
Like llama.cpp's ``--kl-divergence-base`` file, a :class:`ReferenceStore` keeps it in the
session's cache dir (through :class:`~pytest_llmquant.models.cache.ModelCache`: built once under
a file lock, published atomically, every file checksummed on every read, a corrupt entry
rebuilt with one warning), so a warm run only runs the INT8 model.

What is stored for each scored token, and why it is exact enough:

* the FP32 log-probabilities over the whole vocabulary in 16 bits, ``base + step *
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
* separately, the FP32 greedy continuations of the greedy-match prompts.

Statistics are computed from this stored form on cold runs too, so a cold and a warm run
give identical numbers. 2 bytes x vocabulary per scored token: 201 MB for 2,048
tokens of SmolLM2 (a 49,152-token vocabulary), one entry per model, text, token count,
window plan, dtype and device.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..sides.torch_side import scored_logits
from .forward import model_device, model_dtype
from .greedy import greedy_tokens as generate_greedy
from .metrics import first_argmax
from .windows import Window

if TYPE_CHECKING:
    import numpy as np
    import torch

    from ..models.cache import ModelCache
    from ..models.sources import ModelSource
    from .codes_file import CodesFile

#: Bump when what is stored, or how, changes: old entries then stop matching.
FORMAT = 1
KLD_NAMESPACE = "similarity-reference"
GREEDY_NAMESPACE = "similarity-greedy"
_LEVELS = 65535  # codes 1.._LEVELS for finite log-probs, 0 for -inf
_CHUNK_ELEMENTS = 1 << 17  # rows encoded at once: ~1 MB per float64 tensor
_CODES = "logprobs.npy"
_ROWS = "rows.npz"
_GREEDY = "greedy.json"


def encode_log_probs(logp: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(codes, base, step) of (N, V) float64 log-probs: ``codes`` uint16 (N, V), ``base``
    and ``step`` float64 (N,), such that :func:`decode_log_probs` gives ``base + step *
    code`` (``-inf`` for code 0).

    Finite entries get codes 1..65535 spread linearly over the row's own range; ``base``
    is chosen so that the decoded row is normalised exactly (in float64), which spares
    every reader a log-sum-exp pass over the vocabulary.
    """
    import torch

    logp = logp.double()
    top = logp.amax(dim=1, keepdim=True)
    masked = bool(logp.numel()) and bool(logp.amin() == float("-inf"))
    if masked:
        finite = torch.isfinite(logp)
        low = torch.where(finite, logp, torch.full_like(logp, float("inf")))
        low = low.amin(dim=1, keepdim=True)
    else:
        low = logp.amin(dim=1, keepdim=True)
    step = (top - low) / (_LEVELS - 1)
    step = torch.where(step > 0, step, torch.ones_like(step))  # a flat row: every code is 1
    inv = 1.0 / step
    # round((logp - low) / step) + 1, as one fused pass and one in-place rounding
    codes = torch.addcmul(1.0 - low * inv, logp, inv).round_()
    if masked:
        codes = codes.masked_fill_(~finite, 0.0)
    raw = torch.addcmul(low - step, codes, step)
    if masked:
        raw = raw.masked_fill_(~finite, float("-inf"))
    base = (low - step) - torch.logsumexp(raw, dim=1, keepdim=True)
    return (
        codes.to(torch.int32).cpu().numpy().astype("uint16"),
        base[:, 0].cpu().numpy(),
        step[:, 0].cpu().numpy(),
    )


def decode_log_probs(codes: Any, base: Any, step: Any) -> torch.Tensor:
    """Normalised float64 log-probs ``base + step * code`` (``-inf`` for code 0), (N, V)."""
    import numpy as np
    import torch

    codes = np.asarray(codes)
    c = torch.from_numpy(codes.astype(np.float64))
    st = torch.from_numpy(np.asarray(step, dtype=np.float64))[:, None]
    b = torch.from_numpy(np.asarray(base, dtype=np.float64))[:, None]
    logp = torch.addcmul(b, c, st)
    if codes.size and codes.min() == 0:
        logp = logp.masked_fill(c == 0, float("-inf"))
    return logp


@dataclass
class StoredReference:
    """Rows of a stored reference: :class:`~.metrics.ReferenceRows` for the measurement.

    Read from the cache entry, ``codes`` is a :class:`~.codes_file.CodesFile`: one
    window's rows are read from the file when :meth:`rows` slices them.
    """

    codes: np.ndarray | CodesFile  # (N, V) uint16; read a slice of rows at a time
    base: np.ndarray  # (N,) float64
    step: np.ndarray  # (N,) float64
    target_logp: np.ndarray  # (N,) float64, exact
    top: np.ndarray  # (N,) int64, exact
    targets: np.ndarray  # (N,) int64
    masked: np.ndarray  # (N,) bool: the row has a -inf log-prob (code 0)

    def __len__(self) -> int:
        return int(self.codes.shape[0])

    @property
    def vocab(self) -> int:
        return int(self.codes.shape[1])

    def log_probs(self, lo: int, hi: int) -> torch.Tensor:
        return decode_log_probs(self.codes[lo:hi], self.base[lo:hi], self.step[lo:hi])

    def has_masked(self, lo: int, hi: int) -> bool:
        """Whether rows ``lo:hi`` have a ``-inf`` log-prob (a masked vocabulary entry)."""
        return bool(self.masked[lo:hi].any())

    def rows(self, lo: int, hi: int) -> StoredReference:
        return StoredReference(*(getattr(self, name)[lo:hi] for name in self.__dataclass_fields__))


def write_reference(
    directory: Path,
    fp32_model: Any,
    all_ids: torch.Tensor,
    plan: Sequence[Window],
    bos: int | None,
    progress: Callable[[str], None] | None = None,
) -> None:
    """Run the FP32 model over the planned windows and write the stored form into ``directory``.

    The (N, V) codes go straight into a memory-mapped ``.npy`` file, one window at a
    time, so the full table is never in memory.
    """
    import numpy as np
    import torch

    n_tokens = sum(w.n_scored for w in plan)
    codes: Any = None
    side: dict[str, list[np.ndarray]] = {
        k: [] for k in ("base", "step", "target_logp", "top", "masked")
    }
    targets = []
    row = 0
    with torch.inference_mode():
        for i, w in enumerate(plan):
            if progress is not None:
                progress(f"similarity: FP32 reference, window {i + 1} of {len(plan)} (cached)")
            input_ids = all_ids[w.start : w.stop].clone().unsqueeze(0)
            if bos is not None:
                input_ids[0, 0] = bos
            logits = scored_logits(fp32_model, input_ids, w.n_scored).cpu()
            tgt = all_ids[w.targets]
            if codes is None:
                codes = np.lib.format.open_memmap(
                    directory / _CODES,
                    mode="w+",
                    dtype=np.uint16,
                    shape=(n_tokens, logits.shape[1]),
                )
            rows = max(1, _CHUNK_ELEMENTS // logits.shape[1])
            for lo in range(0, w.n_scored, rows):
                logp = torch.log_softmax(logits[lo : lo + rows].double(), dim=-1)
                c, base, step = encode_log_probs(logp)
                codes[row + lo : row + lo + len(c)] = c
                side["base"].append(base)
                side["step"].append(step)
                side["masked"].append((c == 0).any(axis=1))
                t = tgt[lo : lo + rows].unsqueeze(1)
                side["target_logp"].append(logp.gather(1, t).squeeze(1).numpy())
                side["top"].append(first_argmax(logits[lo : lo + rows]).numpy().astype(np.int64))
            targets.append(tgt.numpy().astype(np.int64))
            row += w.n_scored
    codes.flush()
    del codes
    np.savez(
        directory / _ROWS,
        base=np.concatenate(side["base"]),
        step=np.concatenate(side["step"]),
        target_logp=np.concatenate(side["target_logp"]),
        top=np.concatenate(side["top"]),
        masked=np.concatenate(side["masked"]),
        targets=np.concatenate(targets),
    )


def read_reference(entry: Path) -> StoredReference:
    import numpy as np

    from .codes_file import CodesFile

    codes = CodesFile(entry / _CODES)
    with np.load(entry / _ROWS, allow_pickle=False) as rows:
        side = {k: rows[k] for k in ("base", "step", "target_logp", "top", "targets", "masked")}
    if side["masked"].dtype != np.bool_ or any(len(v) != len(codes) for v in side.values()):
        raise ValueError("the side arrays do not fit the log-probs")
    return StoredReference(codes=codes, **side)


def _digest(data: Any) -> str:
    if isinstance(data, bytes):
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def source_fingerprint(source: ModelSource, model: Any) -> dict[str, Any] | None:
    """What identifies the FP32 weights of ``source`` on disk, or None if nothing does.

    A .gguf file: its path, size and mtime (as the FP32 weights cache uses); a
    directory: its path and the size and mtime of each file in it; a hub model: the
    commit transformers loaded (``config._commit_hash``), None when it does not say (no
    reference is kept then). A path lets :func:`prune_orphans` find entries whose
    model is gone.
    """
    if source.kind == "gguf":
        st = os.stat(source.location)
        return {"path": source.location, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if source.kind == "dir":
        files = {}
        for path in sorted(Path(source.location).iterdir()):
            if path.is_file():
                st = path.stat()
                files[path.name] = [st.st_size, st.st_mtime_ns]
        return {"path": source.location, "files": files}
    commit = getattr(getattr(model, "config", None), "_commit_hash", None)
    return {"hub_commit": commit} if isinstance(commit, str) and commit else None


def _source_still_exists(manifest: dict[str, Any]) -> bool:
    path = manifest.get("fingerprint", {}).get("path")
    return not isinstance(path, str) or os.path.exists(path)


def prune_orphans(cache: ModelCache) -> int:
    """Delete stored references of model files and directories that are gone (a test's
    temporary model, a deleted download): nothing can ever hit them again."""
    return sum(
        cache.prune(namespace, _source_still_exists)
        for namespace in (KLD_NAMESPACE, GREEDY_NAMESPACE)
    )


class ReferenceStore:
    """FP32 reference outputs of one model source, kept in a :class:`ModelCache`.

    ``source`` names the model (a path or hub id) and ``fingerprint`` says which
    version of it (see :func:`source_fingerprint`). Entries are keyed by the source,
    the evaluation text's SHA-256 and its token ids, the scored token count, the window
    plan, the reference dtype and device; the fingerprint and the torch/transformers
    versions must match too, or the entry is rebuilt.
    """

    def __init__(
        self,
        cache: ModelCache,
        source: str,
        fingerprint: dict[str, Any],
        *,
        label: str | None = None,
    ) -> None:
        self.cache = cache
        self.source = source
        self.fingerprint = fingerprint
        self.label = label or source

    @classmethod
    def for_source(
        cls, cache: ModelCache, source: ModelSource, model: Any, *, label: str | None = None
    ) -> ReferenceStore | None:
        """The store for a resolved ``--llmq-model``, or None when its version is unknown."""
        fingerprint = source_fingerprint(source, model)
        if fingerprint is None:
            return None
        return cls(cache, source.location, fingerprint, label=label or source.label)

    def _versions(self) -> dict[str, Any]:
        from ..versions import library_versions

        return {**self.fingerprint, **library_versions(), "reference_format": FORMAT}

    def _identity(self, what: str, model: Any, key: dict[str, Any]) -> str:
        dtype, device = model_dtype(model), model_device(model).type
        key = {"source": self.source, "dtype": dtype, "device": device, **key}
        return f"{what} of {self.label} ({dtype} on {device}, key {_digest(key)[:16]})"

    def _build(self, write: Callable[..., None], *args: Any) -> None:
        prune_orphans(self.cache)  # on a miss only: a hit costs nothing extra
        write(*args)

    def kld_reference(
        self,
        fp32_model: Any,
        ids: Sequence[int],
        plan: Sequence[Window],
        *,
        text_sha256: str,
        bos: int | None,
        progress: Callable[[str], None] | None = None,
    ) -> StoredReference:
        """The stored FP32 side of ``plan`` over ``ids``, computed first if not cached."""
        import numpy as np
        import torch

        all_ids = torch.tensor(list(ids), dtype=torch.long)
        key = {
            "text_sha256": text_sha256,
            "ids_sha256": _digest(all_ids.numpy().astype("<i8").tobytes()),
            "n_tokens": sum(w.n_scored for w in plan),
            "plan": [[w.start, w.stop, w.n_scored] for w in plan],
            "bos": bos,
        }
        identity = self._identity(
            f"similarity reference ({key['n_tokens']} tokens, {len(plan)} windows)",
            fp32_model,
            key,
        )
        want = np.concatenate([all_ids[w.targets].numpy() for w in plan])
        for attempt in (1, 2):
            entry = self.cache.get_or_build(
                KLD_NAMESPACE,
                identity,
                self._versions(),
                lambda d: self._build(write_reference, d, fp32_model, all_ids, plan, bos, progress),
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
        self, fp32_model: Any, tokenizer: Any, prompts: Sequence[str], new_tokens: int
    ) -> list[list[int]]:
        """The FP32 greedy continuations of ``prompts``, generated first if not cached."""
        prompt_ids = [list(tokenizer(p)["input_ids"]) for p in prompts]
        key = {"prompt_ids": prompt_ids, "new_tokens": new_tokens}
        identity = self._identity(
            f"greedy reference ({len(prompts)} prompts x {new_tokens} tokens)", fp32_model, key
        )

        def build(directory: Path) -> None:
            prune_orphans(self.cache)
            tokens = generate_greedy(fp32_model, tokenizer, prompts, new_tokens)
            (directory / _GREEDY).write_text(json.dumps({"tokens": tokens}), encoding="utf-8")

        for attempt in (1, 2):
            entry = self.cache.get_or_build(GREEDY_NAMESPACE, identity, self._versions(), build)
            try:
                tokens = json.loads((entry / _GREEDY).read_text(encoding="utf-8"))["tokens"]
                ok = len(tokens) == len(prompts) and all(
                    len(t) == new_tokens and all(isinstance(x, int) for x in t) for t in tokens
                )
            except (OSError, ValueError, KeyError, TypeError):
                ok = False
            if ok:
                return [list(t) for t in tokens]
            if attempt == 2:
                raise RuntimeError(f"{identity}: freshly generated tokens do not fit")
            self.cache.discard(GREEDY_NAMESPACE, identity, "does not fit the prompts")
        raise AssertionError("unreachable")  # pragma: no cover
