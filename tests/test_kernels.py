"""The int8 C kernel as a built artifact: where it is built, how it is verified, how it fails.

Held here: it builds wherever :func:`kernels.kernel_unavailable_reason` says it should (a
failure there fails the test, never skips it); it lands in ``<cache dir>/kernels/`` of the
configured cache dir, or of the temporary dir an unwritable one falls back to; a tampered
library is rebuilt with one warning, never loaded; two processes build it once; a failed
allocation in C comes back as a status and then as one line that names the fix. What the
kernel computes is checked in test_schemes.py.
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

from pytest_llmquant.models import cache as cache_mod
from pytest_llmquant.models.cache import MANIFEST, LlmqCacheWarning, ModelCache, sha256_file
from pytest_llmquant.schemes import kernels
from pytest_llmquant.schemes.kernels import build

REASON = kernels.kernel_unavailable_reason()
needs_kernel = pytest.mark.skipif(
    REASON is not None, reason=f"C kernel not expected to build here: {REASON}"
)


@pytest.fixture(autouse=True)
def kernel_state():
    """Each test starts with nothing loaded and no cache warning given, and leaves the
    kernel to load as it did before."""
    before = kernels.configured_cache_dir()
    cache_mod._warned.clear()
    kernels.set_cache_dir(before)
    yield
    kernels.set_cache_dir(before)


def _manifest_sha(path: Path) -> str:
    manifest = json.loads((path.parent / MANIFEST).read_text(encoding="utf-8"))
    return manifest["files"][path.name]["sha256"]


# -- where it builds, and where it says why not -------------------------------------------


@needs_kernel
def test_kernel_builds_where_it_should():
    lib = kernels.load_library()  # raises (fails this test) if the build breaks
    assert lib.llmq_abi_version() == build.ABI_VERSION
    assert kernels.path_description() == "AVX2 C kernel"


@needs_kernel
def test_built_into_the_configured_cache_dir(tmp_path):
    kernels.set_cache_dir(str(tmp_path / "cache"))
    kernels.load_library()
    path = kernels.library_path()
    assert path is not None and path.is_file()
    assert path.parent.parent == (tmp_path / "cache" / "kernels").resolve()
    # the name carries the hash of source, flags and compiler; the sidecar its checksum
    assert path.name.startswith("libllmq_int8-") and len(path.stem) == len("libllmq_int8-") + 16
    assert _manifest_sha(path) == sha256_file(path)
    assert (path.parent / "int8.c").read_bytes() == build.source()


def test_library_name_changes_with_source_compiler_and_version():
    src, cc, version = b"int x;", ["gcc"], "gcc 12.2.0"
    name = build.library_name(src, cc, version)
    assert name == build.library_name(src, cc, version)
    others = {
        build.library_name(b"int y;", cc, version),
        build.library_name(src, ["clang"], version),
        build.library_name(src, cc, "gcc 13.1.0"),
    }
    assert name not in others and len(others) == 3


@pytest.mark.parametrize(
    "env,plat,machine,cpu_flags,reason",
    [
        (
            {"LLMQ_INT8_KERNEL": "0"},
            "linux",
            "x86_64",
            "avx2 fma",
            "disabled by LLMQ_INT8_KERNEL=0",
        ),
        ({}, "darwin", "x86_64", "avx2 fma", "needs Linux, not darwin"),
        ({}, "linux", "aarch64", "avx2 fma", "needs an x86-64 CPU, not aarch64"),
        (
            {"CC": "no-such-cc-llmq"},
            "linux",
            "x86_64",
            "avx2 fma",
            "no C compiler: no-such-cc-llmq",
        ),
        ({}, "linux", "x86_64", "sse4_2 avx", "the CPU lacks AVX2 and FMA"),
        ({}, "linux", "x86_64", "avx2", "the CPU lacks FMA"),
        ({}, "linux", "x86_64", None, "cannot read the CPU flags"),
        ({}, "linux", "x86_64", "sse4_2 avx2 fma", None),
    ],
)
def test_unavailable_reason_checks_env_platform_compiler_and_cpu(
    monkeypatch, tmp_path, env, plat, machine, cpu_flags, reason
):
    monkeypatch.delenv("LLMQ_INT8_KERNEL", raising=False)
    monkeypatch.setenv("CC", sys.executable)  # a program that exists, whatever this host has
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(sys, "platform", plat)
    monkeypatch.setattr(platform, "machine", lambda: machine)
    cpuinfo = tmp_path / "cpuinfo"
    if cpu_flags is not None:
        cpuinfo.write_text(f"processor\t: 0\nflags\t\t: fpu {cpu_flags}\n\nprocessor\t: 1\n")
    monkeypatch.setattr(build, "CPUINFO", cpuinfo)
    got = kernels.kernel_unavailable_reason()
    if reason is None:
        assert got is None
    else:
        assert got is not None and got.startswith(reason)
        assert kernels.path_description() == f"torch dequantize fallback ({got})"


def test_disabled_kernel_raises_one_line_naming_the_switch(monkeypatch, tmp_path):
    monkeypatch.setenv("LLMQ_INT8_KERNEL", "0")
    kernels.set_cache_dir(str(tmp_path))
    with pytest.raises(kernels.KernelError) as err:
        kernels.load_library()
    assert str(err.value) == (
        "int8 C kernel unavailable (disabled by LLMQ_INT8_KERNEL=0); unset LLMQ_INT8_KERNEL to use it"
    )
    assert not any(tmp_path.iterdir())  # nothing was built


def test_reason_and_description_need_neither_torch_nor_a_build(tmp_path):
    code = textwrap.dedent(
        f"""
        import sys
        from pytest_llmquant.schemes import kernels
        kernels.set_cache_dir({str(tmp_path)!r})
        print(kernels.kernel_unavailable_reason(), "|", kernels.path_description())
        assert "torch" not in sys.modules, "importing the kernels package imported torch"
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert not any(tmp_path.iterdir())  # nothing was built


# -- the cache: fallback, verification, one build ------------------------------------------


@needs_kernel
def test_unwritable_cache_dir_falls_back_to_one_temporary_dir_with_one_warning(tmp_path):
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("a file where the cache dir should be")
    kernels.set_cache_dir(str(blocked / "cache"))
    with pytest.warns(LlmqCacheWarning, match="is not writable; using ") as record:
        kernels.load_library()
    assert len(record) == 1
    path = kernels.library_path()
    assert path is not None
    root = path.parent.parent.parent
    try:
        assert root.name.startswith("pytest-llmquant-cache-") and blocked not in path.parents
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the model cache shares that dir: no second warning
            assert ModelCache(blocked / "cache").root == root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@needs_kernel
def test_tampered_library_is_rebuilt_with_one_warning(tmp_path):
    kernels.set_cache_dir(str(tmp_path))
    kernels.load_library()
    path = kernels.library_path()
    assert path is not None
    good = path.read_bytes()
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0xFF
    tampered = path.with_name("tampered")
    tampered.write_bytes(bad)
    os.replace(tampered, path)  # a new file: never rewrite the pages this process has mapped
    kernels.set_cache_dir(str(tmp_path))  # a later run, as far as loading goes
    with pytest.warns(
        LlmqCacheWarning,
        match=r"is corrupt \(libllmq_int8-\w+\.so fails its checksum\); rebuilding it",
    ) as record:
        lib = kernels.load_library()
    assert len(record) == 1
    assert lib.llmq_abi_version() == build.ABI_VERSION
    assert path.read_bytes() != bytes(bad) and _manifest_sha(path) == sha256_file(path)
    kernels.set_cache_dir(str(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # valid again: loads without a word
        kernels.load_library()


@needs_kernel
def test_two_processes_build_once(tmp_path):
    log = tmp_path / "compiles.log"
    cc = tmp_path / "counting-cc"
    cc.write_text(
        "#!/bin/sh\n"
        f'case "$*" in *-shared*) echo compile >> "{log}";; esac\n'
        f'exec {shutil.which("gcc")} "$@"\n'
    )
    cc.chmod(0o755)
    code = textwrap.dedent(
        f"""
        from pytest_llmquant.schemes import kernels
        kernels.set_cache_dir({str(tmp_path / "cache")!r})
        print(kernels.load_library().llmq_abi_version())
        """
    )
    env = {**os.environ, "CC": str(cc)}
    procs = [
        subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert outs == [str(build.ABI_VERSION)] * 2
    assert log.read_text().split() == ["compile"]


# -- failures inside a call ----------------------------------------------------------------


def _buffers(*sizes: int) -> list[ctypes.Array[ctypes.c_float]]:
    return [(ctypes.c_float * s)() for s in sizes]


@needs_kernel
@pytest.mark.parametrize("tokens,cols", [(1 << 55, 2), (1 << 62, 1 << 10)])
def test_failed_scratch_allocation_is_a_status_then_one_line(tokens, cols):
    """The W8A8 kernels allocate int8 activations of tokens x cols bytes: 2**56 bytes is
    more than any address space, and 2**72 overflows size_t. Neither may write y."""
    lib = kernels.load_library()
    q, ws, x, bias = _buffers(4, 4, 4, 4)
    y = (ctypes.c_float * 4)(*[7.0] * 4)
    status = lib.llmq_w8a8_gemm(q, ws, x, None, bias, y, tokens, 4, cols, cols, 1, 1)
    assert status == kernels.ENOMEM
    status_packed = lib.llmq_w8a8_packed(q, x, None, bias, y, tokens, 4, 32 * cols, 32 * cols, 1)
    assert status_packed == kernels.ENOMEM
    assert list(y) == [7.0] * 4  # nothing written
    with pytest.raises(kernels.KernelError) as err:
        kernels.check_status(status, "llmq_w8a8_gemm", tokens, 4, cols)
    message = str(err.value)
    assert "\n" not in message
    assert "could not allocate" in message and "fewer tokens per forward call" in message


@needs_kernel
def test_sizes_the_kernel_cannot_use_are_rejected_before_anything_is_written():
    lib = kernels.load_library()
    q, ws, x = _buffers(64, 4, 64)
    y = (ctypes.c_float * 2)(7.0, 7.0)
    # 64 columns in blocks of 32 are 2 groups, not 3; packed blocks must be whole chunks
    assert lib.llmq_wo_gemm(q, ws, x, None, y, 1, 2, 64, 32, 3, 1) == kernels.EINVAL
    assert lib.llmq_wo_packed(q, x, None, y, 1, 2, 64, 16, 1) == kernels.EINVAL
    assert lib.llmq_wo_gemm(q, ws, x, None, y, -1, 2, 64, 32, 2, 1) == kernels.EINVAL
    assert list(y) == [7.0, 7.0]
    with pytest.raises(kernels.KernelError, match="rejected the sizes .* please report it"):
        kernels.check_status(kernels.EINVAL, "llmq_wo_gemm", 1, 2, 64)


@needs_kernel
def test_wrappers_check_tensor_sizes_before_calling_c():
    torch = pytest.importorskip("torch")
    from pytest_llmquant.schemes.int8_math import pack_rows, quantize_per_channel

    q, scales = quantize_per_channel(torch.randn(8, 64), 32)
    packed = pack_rows(q, scales, 32)
    x, out = torch.randn(1, 64), torch.empty(1, 8)
    kernels.wo_packed(packed, x, None, out, 8, 64, 32)  # the sizes the layer would pass
    with pytest.raises(ValueError, match="out has 8 elements, not 16"):
        kernels.wo_packed(packed, torch.randn(2, 64), None, out, 8, 64, 32)
    with pytest.raises(ValueError, match="packed weight has"):
        kernels.wo_packed(packed[:-1], x, None, out, 8, 64, 32)
    with pytest.raises(ValueError, match="bias has 7 elements, not 8"):
        kernels.wo_packed(packed, x, torch.zeros(7), out, 8, 64, 32)
    with pytest.raises(ValueError, match="cannot be packed"):
        kernels.packed_nbytes(8, 64, 48)
