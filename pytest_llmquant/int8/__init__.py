"""Where the INT8 model under test comes from: a built-in scheme or the user's quantize hook
(``build``), or a checkpoint the user ships (``checkpoint``)."""
