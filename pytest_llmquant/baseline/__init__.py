"""Quality baselines: ``--llmq-save-baseline=FILE`` saves the metrics of a good run,
``--llmq-baseline=FILE`` fails later runs whose metrics got worse by more than a tolerance.

- :mod:`.store`: which metrics a run leaves for later (with their standard errors and
  what they were measured on), and the file's write/load;
- :mod:`.compare`: the tolerances and the noise rule: which changes count as a regression;
- :mod:`.comparable`: refusing a baseline measured on another text or setting.

:mod:`pytest_llmquant.merge` joins the baselines (or reports) of several CI jobs.

Modelled on pytest-memray's ``--fail-on-increase``: a quantizer change that doubles the
KL divergence is a regression worth seeing long before it crosses ``max_kl``.
"""
