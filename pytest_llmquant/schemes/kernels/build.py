"""Build ``int8.c`` into the pytest-llmquant cache, verify it, and load it with ``ctypes``.

Why this shape:

- The library is an entry of :class:`pytest_llmquant.models.cache.ModelCache` (namespace
  ``kernels``), so it gets that cache's guarantees without a second copy of the code:
  the unwritable-dir fallback (a temporary dir and one warning), a file lock so two
  xdist workers compile once, a build in a private directory published by one atomic
  rename, and a manifest (the sidecar) holding the SHA-256 of the ``.so``, checked before
  every load; a tampered or truncated library is rebuilt with one warning, never loaded.
- The ``.so`` name carries a hash of the source, the flags, the compiler command and the
  compiler's version, so an edited kernel or a new gcc gets a new library and a process
  never maps two different builds under one name.
- Nothing here imports torch: the plugin asks :func:`kernel_unavailable_reason` at
  configure time, before any model is loaded.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

SOURCE_NAME = "int8.c"
CFLAGS = ("-O3", "-mavx2", "-mfma", "-fopenmp", "-shared", "-fPIC", "-std=c11")
LIBS = ("-lm",)
#: must equal LLMQ_ABI_VERSION in int8.c
ABI_VERSION = 7
#: ``LLMQ_INT8_KERNEL=0`` turns the kernel off (the schemes then run their torch fallback)
DISABLE_ENV = "LLMQ_INT8_KERNEL"
CPUINFO = Path("/proc/cpuinfo")
CACHE_NAMESPACE = "kernels"

_p, _i64, _i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
#: the exported functions and their argument types; each returns an int status
SIGNATURES: dict[str, list[type]] = {
    "llmq_wo_gemm": [_p, _p, _p, _p, _p, _i64, _i64, _i64, _i64, _i64, _i32],
    "llmq_w8a8_gemm": [_p, _p, _p, _p, _p, _p, _i64, _i64, _i64, _i64, _i64, _i32],
    "llmq_wo_packed": [_p, _p, _p, _p, _i64, _i64, _i64, _i64, _i32],
    "llmq_wo_packed_parts": [_p, _p, _p, _i64, _i64, _i64, _i64, _p, _p, _i32],
    "llmq_wo_packed_run": [_p, _p, _p, _i64, _i32],
    "llmq_unpack_f32": [_p, _p, _i64, _i64, _i64, _i32],
    "llmq_quantize_rows": [_p, _p, _p, _i64, _i64, _i64, _i32],
    "llmq_w8a8_packed": [_p, _p, _p, _p, _p, _i64, _i64, _i64, _i64, _i32],
}


def compiler_command() -> list[str]:
    """``$CC`` split like a shell would (``ccache gcc`` works), else ``gcc``."""
    return shlex.split(os.environ.get("CC") or "gcc") or ["gcc"]


def _cpu_flags() -> set[str] | None:
    try:
        text = CPUINFO.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return set(value.split())
    return None


def kernel_unavailable_reason() -> str | None:
    """Why the C kernel cannot be used here, or None where it should build and load.

    Cheap and torch-free (environment, platform, ``$CC`` on PATH, ``/proc/cpuinfo``;
    nothing is compiled), so the plugin can call it at configure time. None is a
    promise the tests hold: where it is None, a failed build fails the kernel tests."""
    if os.environ.get(DISABLE_ENV, "1").strip() == "0":
        return f"disabled by {DISABLE_ENV}=0"
    if sys.platform != "linux":
        return f"needs Linux, not {sys.platform}"
    machine = platform.machine()
    if machine.lower() not in ("x86_64", "amd64"):
        return f"needs an x86-64 CPU, not {machine or 'an unknown one'}"
    cc = compiler_command()
    if shutil.which(cc[0]) is None:
        return f"no C compiler: {cc[0]} is not on PATH (install gcc or set CC)"
    flags = _cpu_flags()
    if flags is None:
        return f"cannot read the CPU flags from {CPUINFO}"
    missing = [f.upper() for f in ("avx2", "fma") if f not in flags]
    if missing:
        return f"the CPU lacks {' and '.join(missing)}"
    return None


def source() -> bytes:
    """The kernel source shipped as package data."""
    return resources.files(__package__).joinpath(SOURCE_NAME).read_bytes()


def _compiler_version(cc: list[str]) -> str:
    try:
        done = subprocess.run([*cc, "--version"], capture_output=True, text=True, timeout=60)
    except OSError as exc:
        raise RuntimeError(f"cannot run {cc[0]}: {exc.strerror or exc}") from None
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cc)} --version failed")
    return done.stdout.strip()


def _first_error(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or ["no output"])[0]


def library_name(src: bytes, cc: list[str], version: str) -> str:
    parts = [src, " ".join(cc).encode(), " ".join(CFLAGS + LIBS).encode(), version.encode()]
    digest = hashlib.sha256(b"\0".join(parts)).hexdigest()
    return f"libllmq_int8-{digest[:16]}.so"


def build_and_load(cache_dir: str | None) -> tuple[ctypes.CDLL, Path]:
    """The kernel library, compiled into ``<cache dir>/kernels/`` if it is not there (or
    fails its checksum), and its path. Raises RuntimeError or OSError on any failure."""
    from ...models.cache import ModelCache

    cc = compiler_command()
    src = source()
    version = _compiler_version(cc)
    name = library_name(src, cc, version)

    def compile_into(directory: Path) -> None:
        c_file = directory / SOURCE_NAME  # kept next to the .so: what it was built from
        c_file.write_bytes(src)
        cmd = [*cc, *CFLAGS, str(c_file), "-o", str(directory / name), *LIBS]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cc)} failed: {_first_error(done.stderr)}")

    fingerprint = {
        "source_sha256": hashlib.sha256(src).hexdigest(),
        "compiler": cc,
        "compiler_version": version,
        "flags": [*CFLAGS, *LIBS],
    }
    cache = ModelCache(cache_dir)
    entry = cache.get_or_build(CACHE_NAMESPACE, f"int8 C kernel {name}", fingerprint, compile_into)
    path = entry / name
    lib = ctypes.CDLL(str(path))
    for function, argtypes in SIGNATURES.items():
        getattr(lib, function).argtypes = argtypes
        getattr(lib, function).restype = ctypes.c_int
    lib.llmq_abi_version.restype = ctypes.c_int
    if lib.llmq_abi_version() != ABI_VERSION:
        raise RuntimeError(f"{path} is kernel version {lib.llmq_abi_version()}, not {ABI_VERSION}")
    return lib, path
