"""Errors that carry one line meant for a person.

Everything the user can get wrong (a path, a scheme name, a marker argument)
raises :class:`LlmqUsageError` with a message that says what is wrong and how
to fix it. The plugin turns it into a pytest usage error (exit code 4) when it
is found at start-up, and into a one-line test error when it is found while a
fixture loads a model. No torch traceback ever reaches the user for bad input.
"""

from __future__ import annotations


class LlmqError(Exception):
    """Base class: the message is one complete line, shown without a traceback."""


class LlmqUsageError(LlmqError):
    """The user's input (option, path, model, marker argument) is wrong."""


class LlmqSkip(LlmqError):
    """A measurement that cannot be made for this model: the test skips with this reason
    (and the fix), instead of measuring another model or failing."""


class LlmqModelError(LlmqError):
    """A model could not be loaded or quantized, for a reason outside our control."""


class LlmqUnsupportedLayerError(LlmqUsageError):
    """A scheme met a layer it cannot quantize faithfully (an expert layer whose class does
    not follow the expert API it knows): it refuses the model rather than skip the layer
    silently. The message names the module and its class."""
