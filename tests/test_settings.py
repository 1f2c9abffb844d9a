"""Every setting is a CLI flag, an environment variable and an ini key, resolved once at
start-up into a frozen Settings: CLI > env > ini > default, and every bad value of every
option exits 4 before collection, naming the option, where it was set and the fix."""

from __future__ import annotations

import dataclasses

import pytest

from pytest_llmquant.settings import OPTIONS, Settings

SHOW = """
def test_show(llmq_session):
    s = llmq_session.settings
    print("SCHEMES", s.scheme or llmq_session.schemes)
    print("THREADS", s.threads, s.origin["threads"])
    print("DEVICE", s.device)
    print("MAXKL", s.max_kl, s.origin["max_kl"])
"""


def test_defaults_without_ini_or_cli(pytester: pytest.Pytester, monkeypatch) -> None:
    monkeypatch.delenv("PYTEST_LLMQ_THREADS", raising=False)
    pytester.makepyfile(SHOW)
    result = pytester.runpytest_inprocess("-s")
    result.assert_outcomes(passed=1)
    from pytest_llmquant.schemes import default_scheme

    result.stdout.fnmatch_lines(
        [
            f"*SCHEMES ?'{default_scheme()}'?",
            "THREADS * default",
            "DEVICE cpu",
            "MAXKL 0.01 default",
        ]
    )


def test_ini_sets_values(pytester: pytest.Pytester, monkeypatch) -> None:
    monkeypatch.delenv("PYTEST_LLMQ_THREADS", raising=False)
    pytester.makeini("[pytest]\nllmq_threads = 1\nllmq_max_kl = 0.5\nllmq_scheme = dynamic-int8\n")
    pytester.makepyfile(SHOW)
    result = pytester.runpytest_inprocess("-s")
    result.stdout.fnmatch_lines(["*SCHEMES ('dynamic-int8',)", "THREADS 1 ini", "MAXKL 0.5 ini"])


def test_env_wins_over_ini_and_cli_wins_over_env(pytester: pytest.Pytester, monkeypatch) -> None:
    pytester.makeini("[pytest]\nllmq_max_kl = 0.5\n")
    pytester.makepyfile(SHOW)
    monkeypatch.setenv("PYTEST_LLMQ_MAX_KL", "0.3")
    pytester.runpytest_inprocess("-s").stdout.fnmatch_lines(["MAXKL 0.3 env"])
    result = pytester.runpytest_inprocess("-s", "--llmq-max-kl=0.02")
    result.stdout.fnmatch_lines(["MAXKL 0.02 CLI"])


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(dataclasses.FrozenInstanceError, match="max_kl"):  # only our field name
        settings.max_kl = 1.0  # type: ignore[misc]
    assert settings.max_kl == Settings().max_kl


#: one bad value per checked option, and the words its error must contain
BAD_VALUES = {
    "device": ("gpu0", "must be a device like cpu, cuda or cuda:1"),
    "reference_dtype": ("fp8", "must be one of float32, bfloat16, float16"),
    "cache_dir": ("{file}", "must be a directory"),
    "threads": ("0", "must be a positive integer"),
    "trust_remote_code": ("maybe", "must be true or false"),
    "eval_text": ("{missing}", "must be an existing file"),
    "eval_tokens": ("-5", "must be a positive integer"),
    "max_kl": ("abc", "must be a finite number > 0"),
    "min_same_top": ("1.5", "must be a finite number in (0, 1]"),
    "max_ppl_ratio": ("nan", "must be a finite number > 0"),
    "min_speedup": ("0", "must be a finite number > 0"),
    "min_memory_ratio": ("-2", "must be a finite number > 0"),
    "time_budget": ("inf", "must be a finite number > 0"),
    "runtime_timeout": ("0", "must be a finite number > 0"),
    "speed_inconclusive": ("maybe", "must be one of fail, skip, pass"),
    "int8_runtime": ("vllm", "must be one of torch, llama.cpp, onnxruntime"),
    "reference_runtime": ("tensorrt", "must be one of torch, llama.cpp, onnxruntime"),
    "new_tokens": ("2.5", "must be a positive integer"),
    "suite": ("perhaps", "must be true or false"),
    "report": ("{nodir}/r.json", "must be a file path in an existing directory"),
    "report_md": ("{nodir}/r.md", "must be a file path in an existing directory"),
    "save_baseline": ("{nodir}/b.json", "must be a file path in an existing directory"),
    "baseline": ("{missing}", "create it with --llmq-save-baseline=FILE on a good run"),
    "baseline_z": ("-1", "must be a finite number >= 0"),
    "model": ("./no/such/model", "no such file or directory"),
    "scheme": ("int4-magic", "unknown --llmq-scheme 'int4-magic'; valid schemes: "),
    "int8_model": ("{missing}", "no such"),
}
WHERE = {
    "CLI": ("on the command line", "set on the command line"),
    "env": ("in the environment", "set in the environment"),
    "ini": ("in the ini file", "set by the ini key"),
}


def test_every_option_has_a_bad_value_case() -> None:
    """A new option cannot be added without its bad-value test."""
    assert set(BAD_VALUES) == {o.name for o in OPTIONS}, "add a BAD_VALUES case"


@pytest.mark.parametrize("source", ["CLI", "env", "ini"])
@pytest.mark.parametrize("name", sorted(BAD_VALUES))
def test_a_bad_value_exits_4_naming_option_source_and_fix(
    pytester: pytest.Pytester, monkeypatch, name: str, source: str
) -> None:
    opt = {o.name: o for o in OPTIONS}[name]
    monkeypatch.delenv(opt.env, raising=False)  # tests/conftest.py sets the threads one
    value, words = BAD_VALUES[name]
    a_file = pytester.path / "a_file.txt"
    a_file.write_text("x")
    value = value.format(
        file=a_file, missing=pytester.path / "missing.json", nodir=pytester.path / "nodir"
    )
    pytester.makepyfile("def test_never_collected(): pass")
    args: list[str] = []
    if source == "CLI":
        args.append(f"{opt.cli}={value}")
    elif source == "env":
        monkeypatch.setenv(opt.env, value)
    else:
        pytester.makeini(f"[pytest]\n{opt.key} = {value}\n")
    result = pytester.runpytest_inprocess(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = result.stderr.str()
    assert "test_never_collected" not in result.stdout.str()
    if opt.flag and source == "CLI":  # a switch takes no value: argparse refuses it, naming it
        assert opt.cli in err
        return
    lines = [line for line in err.splitlines() if words in line]
    assert len(lines) == 1, err
    assert any(w in lines[0] for w in WHERE[source]), lines[0]


def test_cli_and_marker_refuse_the_same_value_with_the_same_words(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile("def test_x(): pass")
    cli = pytester.runpytest_inprocess("--llmq-min-same-top=1.5").stderr.str()
    pytester.makepyfile(
        test_marked="""
import pytest

@pytest.mark.quant_similarity(min_same_top=1.5)
def test_gate():
    pass
"""
    )
    marker = pytester.runpytest_inprocess("test_marked.py").stdout.str()
    assert "must be a finite number in (0, 1]" in cli
    assert "min_same_top=1.5 must be a finite number in (0, 1]" in marker


def test_every_option_is_in_help(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_inprocess("--help")
    text = result.stdout.str()
    for opt in OPTIONS:
        assert opt.cli in text, opt.cli
        assert f"{opt.key} (" in text, opt.key  # the ini key is listed too


def test_markers_are_registered_for_strict_markers(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_inprocess("--markers")
    result.stdout.fnmatch_lines(
        [
            "@pytest.mark.quant_similarity(max_kl=None, min_same_top=None, max_ppl_ratio=None): *",
            "@pytest.mark.quant_speedup(min_speedup=None): *",
            "@pytest.mark.quant_memory(min_ratio=None, kind='weights'): *",
        ]
    )


class FakeConfig:
    """Enough of pytest.Config for settings.resolve: CLI values only."""

    def __init__(self, **cli: str) -> None:
        self.cli = cli

    def getoption(self, name: str, default: object = None) -> object:
        return self.cli.get(name, default)

    def getini(self, name: str) -> object:
        return [] if name in ("llmq_model", "llmq_scheme") else None


@pytest.mark.parametrize(
    ("device", "expected"),
    [("cpu", "float32"), ("cuda", "bfloat16"), ("cuda:1", "bfloat16")],
)
def test_the_reference_is_what_users_deploy_on_that_device(
    monkeypatch: pytest.MonkeyPatch, device: str, expected: str
) -> None:
    from pytest_llmquant.settings import resolve

    monkeypatch.delenv("PYTEST_LLMQ_REFERENCE_DTYPE", raising=False)
    s = resolve(FakeConfig(llmq_device=device))  # type: ignore[arg-type]
    assert (s.reference_dtype, s.origin["reference_dtype"]) == (expected, "default")
    s = resolve(FakeConfig(llmq_device=device, llmq_reference_dtype="float16"))  # type: ignore[arg-type]
    assert s.reference_dtype == "float16"


@pytest.mark.parametrize(
    ("dtype", "given", "expected"),
    [
        ("float32", None, 2.0),
        ("bfloat16", None, 1.25),
        ("float16", None, 1.25),
        ("float16", "1.8", 1.8),
    ],
)
def test_the_default_memory_bound_follows_the_reference_precision(
    monkeypatch: pytest.MonkeyPatch, dtype: str, given: str | None, expected: float
) -> None:
    """INT8 is ~1/4 of float32 weights but only ~1/2 of 16-bit ones (less with embeddings
    kept 16-bit): the unasked bound follows the reference; an asked one is kept."""
    from pytest_llmquant.settings import resolve

    monkeypatch.delenv("PYTEST_LLMQ_MIN_MEMORY_RATIO", raising=False)
    s = resolve(FakeConfig(llmq_reference_dtype=dtype, llmq_min_memory_ratio=given))  # type: ignore[arg-type]
    assert s.min_memory_ratio == expected


def test_cuda_without_a_gpu_exits_4_in_one_line(pytester: pytest.Pytester) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device: the error cannot happen here")
    pytester.makepyfile("def test_never_collected(): pass")
    result = pytester.runpytest_inprocess("--llmq-device=cuda")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    lines = [x for x in result.stderr.lines if x.startswith("ERROR:")]
    assert len(lines) == 1
    assert "--llmq-device=cuda: no CUDA device is visible here" in lines[0]
    assert "pass --llmq-device=cpu" in lines[0] and "set on the command line" in lines[0]


def test_without_the_kernel_the_default_is_the_torch_int8_scheme(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the C kernel cannot run, the default scheme is the one that stays fast there,
    under its own name (so its baselines never mix with the kernel scheme's)."""
    from pytest_llmquant.schemes import DEFAULT_SCHEME, NO_KERNEL_SCHEME, default_scheme

    monkeypatch.setenv("LLMQ_INT8_KERNEL", "0")
    assert default_scheme() == NO_KERNEL_SCHEME != DEFAULT_SCHEME
    pytester.makepyfile(SHOW)
    pytester.runpytest_inprocess("-s").stdout.fnmatch_lines([f"*SCHEMES ?'{NO_KERNEL_SCHEME}'?"])
