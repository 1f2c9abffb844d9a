"""Quality baselines: ``--llmq-save-baseline=FILE`` saves the metrics of a good run,
``--llmq-baseline=FILE`` fails later runs whose metrics got worse by more than a tolerance.

- :mod:`.store`: which metrics a run leaves for later, and the file's write/load;
- :mod:`.compare`: the tolerances, and which changes count as a regression.

Modelled on pytest-memray's ``--fail-on-increase``: a quantizer change that doubles the
KL divergence is a regression worth seeing long before it crosses ``max_kl``.
"""
