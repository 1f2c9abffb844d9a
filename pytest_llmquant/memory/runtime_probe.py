"""The ``peak_rss`` probe of a runtime side: the file loaded by its runtime, then decoding.

Runs inside the probe process (:mod:`.rss_probe`), which is already a child of its own,
so the runtime's model class is used directly. The prompt is a few fixed token ids (a
runtime needs no tokenizer to decode, and the memory of 8 decode steps does not depend on
which ids). Besides the peaks, the report splits resident memory into anonymous pages
(what the runtime allocated) and file-backed pages (a memory-mapped weights file, which
the kernel may drop and re-read), since llama.cpp maps its file by default.
"""

from __future__ import annotations

from .rss import ProbeArgs, ProbeReport

PROMPT_IDS = list(range(10, 16))


def _status_bytes(field: str) -> int | None:
    from .rss_probe import _status_kib

    kib = _status_kib(field)
    return None if kib is None else kib * 1024


def serve_in_runtime(args: ProbeArgs) -> ProbeReport:
    """Load ``args["runtime_file"]`` in ``args["runtime"]`` and greedily decode 8 tokens."""
    from ..sides.host import load_factory
    from ..sides.runtimes import RUNTIMES_BY_NAME
    from .rss_probe import hwm_bytes, reset_hwm, rss_bytes

    runtime = RUNTIMES_BY_NAME[str(args["runtime"])]
    threads = int(str(args.get("threads") or 1))
    model = load_factory(runtime.factory)(path=str(args["runtime_file"]), threads=threads)
    load_peak, loaded = hwm_bytes(), rss_bytes()
    anon, file_backed = _status_bytes("RssAnon"), _status_bytes("RssFile")
    can_reset = reset_hwm()
    asked = args.get("new_tokens", 8)
    new_tokens = int(asked) if isinstance(asked, int) else 8
    generated = model.greedy([PROMPT_IDS], new_tokens, [])
    after = hwm_bytes()
    peak = None if load_peak is None or after is None else max(load_peak, after)
    return {
        "runtime": runtime.name,
        "generated_tokens": len(generated[0]),
        "load_peak_bytes": load_peak,
        "loaded_anon_bytes": anon,
        "loaded_file_bytes": file_backed,
        "serve_anon_bytes": _status_bytes("RssAnon"),
        "serve_file_bytes": _status_bytes("RssFile"),
        "_peak": peak,
        "_loaded": loaded,
        "_serve": after if can_reset else None,
    }
