"""Is the device the user asked for really there? Checked once at start-up.

Only a non-CPU device pays for importing torch here: a run on the CPU (the default) keeps
start-up torch-free.
"""

from __future__ import annotations

from ..errors import LlmqUsageError


def check_available(device: str) -> None:
    """Raise a one-line usage error when ``device`` cannot run here."""
    kind, _, index = device.partition(":")
    if kind == "cpu":
        return
    import torch

    if kind == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            build = (
                "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}"
            )
            raise LlmqUsageError(
                f"--llmq-device={device}: no CUDA device is visible here (torch "
                f"{torch.__version__}, {build}); pass --llmq-device=cpu or run on a GPU machine"
            )
        if index and int(index) >= count:
            raise LlmqUsageError(
                f"--llmq-device={device}: this machine has {count} CUDA device(s), "
                f"numbered 0 to {count - 1}; pass one of those"
            )
    elif kind == "mps" and not torch.backends.mps.is_available():
        raise LlmqUsageError(f"--llmq-device={device}: MPS is not available here; pass cpu")
    elif kind == "xpu" and not (hasattr(torch, "xpu") and torch.xpu.is_available()):
        raise LlmqUsageError(f"--llmq-device={device}: no XPU is visible here; pass cpu")
