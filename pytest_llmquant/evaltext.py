"""The text the similarity gate is measured on, and the prompts for generation.

The built-in corpus is assembled from the Python standard library's own
docstrings. That text is on every machine that can run the plugin, needs no
network and no download cache, carries no licence question (it ships with
CPython under the PSF licence), and is the same byte for byte on every run of
the same Python version, so two runs of the gate compare like with like. It is
technical English prose, which is what most users' models are asked about.

Users who care about a domain pass their own file with ``--llmq-eval-text``.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import re
import warnings
from pathlib import Path

from .errors import LlmqUsageError

#: Fixed short natural prompts, used by the speed gate (generation timing) and for
#: the greedy-match figure of the similarity report. Changing them changes every
#: stored baseline, so treat them as frozen.
EVAL_PROMPTS: tuple[str, ...] = (
    "The capital of France is",
    "Once upon a time, in a small village by the sea, there lived",
    "The best way to learn a new programming language is",
    "Water boils at a lower temperature on a mountain because",
    "Here is a short recipe for pancakes:",
    "The three most important things to check before a long car trip are",
)

#: Pure-Python (or C-accelerated but platform-independent) stdlib modules, sorted.
#: Platform-specific modules (os, sys, threading, ...) are left out so that the
#: member list, and with it the text, does not depend on the operating system.
_MODULES: tuple[str, ...] = tuple(
    sorted(
        """
        abc argparse ast base64 bisect calendar collections configparser contextlib copy
        csv dataclasses datetime decimal difflib email.message enum fractions functools
        gettext heapq html inspect ipaddress itertools json logging numbers operator
        pathlib pprint queue random re sched shlex statistics string textwrap typing
        unittest urllib.parse zipfile
        """.split()
    )
)

_MIN_DOC_CHARS = 80  # one-line docstrings ("Return self.") add nothing but noise
_MIN_PARAGRAPH_CHARS = 40
_MIN_LETTER_SHARE = 0.85  # below this a paragraph is a signature, a table or markup
_NOT_LETTER_OR_SPACE = re.compile(r"[^\w ]|[\d_]")


def _paragraphs(doc: str | None) -> list[str]:
    """The prose paragraphs of one docstring, each on one line with single spaces.

    Doctests and indented code blocks are dropped: the gate should measure how a
    model continues English, not how it continues ``>>>`` prompts.
    """
    if not doc or len(doc) < _MIN_DOC_CHARS:
        return []
    out = []
    for block in re.split(r"\n\s*\n", doc):
        lines = [line for line in block.splitlines() if line.strip()]
        if not lines:
            continue
        if any(line.lstrip().startswith((">>>", "... ")) for line in lines):
            continue
        indented = any(line[:1].isspace() for line in lines)
        if indented and not block.rstrip().endswith("."):
            continue  # a code example, not an indented sentence
        text = " ".join(block.split())
        if len(text) < _MIN_PARAGRAPH_CHARS:
            continue
        letters = len(text) - len(_NOT_LETTER_OR_SPACE.findall(text))
        if letters / len(text) < _MIN_LETTER_SHARE:
            continue
        out.append(text)
    return out


def _docs_of(module_name: str) -> list[str | None]:
    """Docstrings of a module, its public classes and functions, and their methods.

    Names are walked in sorted order and only classes and routines are read:
    ``inspect.getdoc`` of a data attribute would return its *type's* docstring.
    """
    module = importlib.import_module(module_name)
    docs: list[str | None] = [inspect.getdoc(module)]
    for name in sorted(dir(module)):
        if name.startswith("_"):
            continue
        obj = getattr(module, name, None)
        if not (inspect.isclass(obj) or inspect.isroutine(obj)) or not _defined_in(
            obj, module_name
        ):
            continue
        docs.append(inspect.getdoc(obj))
        if inspect.isclass(obj):
            for attr, raw in sorted(vars(obj).items()):
                if attr.startswith("_"):
                    continue
                if isinstance(raw, (staticmethod, classmethod)):
                    raw = raw.__func__
                if isinstance(raw, property):
                    raw = raw.fget
                if inspect.isroutine(raw) and _defined_in(raw, module_name):
                    docs.append(inspect.getdoc(raw))
    return docs


def _defined_in(obj: object, module_name: str) -> bool:
    """Whether ``obj`` comes from ``module_name`` (or its C accelerator ``_name``).

    Other libraries add members to stdlib classes when they are imported
    (transformers puts ``warning_once`` on ``logging.Logger``); without this check
    the corpus would depend on what the process happened to import first.
    Objects that do not say where they come from (C method descriptors) are kept.
    """
    origin = getattr(obj, "__module__", None)
    if not isinstance(origin, str):
        return True
    origin = origin.lstrip("_")
    return origin == module_name or origin.startswith(module_name + ".")


@functools.lru_cache(maxsize=1)
def default_corpus() -> str:
    """About 30,000 words of English from the standard library's docstrings.

    Paragraphs are deduplicated (inherited and shared docstrings repeat a lot) and
    joined with blank lines. Deterministic for a given Python version; built in
    well under a second and cached for the life of the process.
    """
    seen: set[str] = set()
    paragraphs: list[str] = []
    with warnings.catch_warnings():
        # typing.io / typing.re and friends warn when touched; we only read docs
        warnings.simplefilter("ignore")
        for module_name in _MODULES:
            for doc in _docs_of(module_name):
                for paragraph in _paragraphs(doc):
                    if paragraph not in seen:
                        seen.add(paragraph)
                        paragraphs.append(paragraph)
    return "\n\n".join(paragraphs)


def load_eval_text(path: str | None) -> str:
    """The evaluation text: the file at ``path`` (UTF-8), or the built-in corpus.

    Every way a file can be unusable becomes one :class:`LlmqUsageError` line that
    names the file and the option to fix, never an ``OSError`` traceback.
    """
    if path is None:
        return default_corpus()
    fix = "pass a readable UTF-8 text file to --llmq-eval-text, or leave it unset for the built-in corpus"
    file = Path(path).expanduser()
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LlmqUsageError(f"--llmq-eval-text: {path} does not exist; {fix}") from None
    except IsADirectoryError:
        raise LlmqUsageError(
            f"--llmq-eval-text: {path} is a directory, not a file; {fix}"
        ) from None
    except UnicodeDecodeError as exc:
        raise LlmqUsageError(
            f"--llmq-eval-text: {path} is not valid UTF-8 (byte {exc.start}); "
            f"re-save it as UTF-8 or {fix}"
        ) from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise LlmqUsageError(f"--llmq-eval-text: cannot read {path} ({reason}); {fix}") from None
    if not text.strip():
        raise LlmqUsageError(f"--llmq-eval-text: {path} is empty; {fix}")
    return text
