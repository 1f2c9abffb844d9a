"""A hub failure is told apart by the huggingface_hub error in the exception chain, never
by the words of transformers' or the hub's messages (which they may reword any day).

transformers catches the hub's errors and raises an ``OSError`` of its own ``from`` them;
these tests build such chains with the hub's own classes (``__init__`` bypassed: the real
ones want an HTTP response) and read the one-line reason ``_explain`` gives.
"""

from __future__ import annotations

import huggingface_hub.errors as hub
import pytest

from pytest_llmquant.models.loading import _explain
from pytest_llmquant.models.sources import ModelSource

SOURCE = ModelSource("some-org/some-model", "hub", "some-model", "some-org/some-model")
PREFIX = "could not load 'some-org/some-model' from the Hugging Face hub: "
FIXES = (
    "; check the id, set HF_HUB_OFFLINE=1 to use a copy already in your HF cache, or pass a "
    "local path"
)


def hub_error(cls: type[BaseException], text: str) -> BaseException:
    error = cls.__new__(cls)
    BaseException.__init__(error, text)
    return error


def wrapped(cause: BaseException, text: str = "transformers' words") -> OSError:
    """What transformers raises: its own OSError, ``from`` the hub's error."""
    try:
        raise OSError(text) from cause
    except OSError as exc:
        return exc


@pytest.mark.parametrize(
    ("cause", "reason"),
    [
        (hub_error(hub.RepositoryNotFoundError, "x"), "no such model on the hub"),
        (hub_error(hub.RevisionNotFoundError, "x"), "no such model on the hub"),
        (hub_error(hub.LocalEntryNotFoundError, "x"), "the hub could not be reached"),
        (hub.OfflineModeIsEnabled("x"), "the hub could not be reached"),
    ],
    ids=["no-repo", "no-revision", "not-cached-and-no-network", "offline"],
)
def test_the_hub_error_type_decides_the_reason(cause: BaseException, reason: str) -> None:
    assert str(_explain(wrapped(cause), SOURCE)) == PREFIX + reason + FIXES


def test_words_that_once_were_matched_decide_nothing_without_the_type() -> None:
    """An error that merely *says* 404 or "couldn't connect" gets the general reason, with
    its own text so the user still sees it."""
    text = "404 Client Error: Repository Not Found; we couldn't connect, offline"
    assert str(_explain(OSError(text), SOURCE)) == (
        PREFIX + f"the hub could not be reached or the id is wrong ({text})" + FIXES
    )


def test_a_gated_repo_is_not_called_missing() -> None:
    """GatedRepoError is a RepositoryNotFoundError, but the repo exists: the hub's text
    (which says how to get access) is shown instead."""
    message = str(_explain(wrapped(hub_error(hub.GatedRepoError, "x"), "gated"), SOURCE))
    assert message == PREFIX + "the hub could not be reached or the id is wrong (gated)" + FIXES


def test_the_type_is_found_however_deep_in_the_chain() -> None:
    deep = wrapped(wrapped(hub_error(hub.RepositoryNotFoundError, "x")), "outer")
    assert str(_explain(deep, SOURCE)) == PREFIX + "no such model on the hub" + FIXES
