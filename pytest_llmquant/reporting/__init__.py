"""What a run writes besides the test results, one file per output.

- :mod:`.terminal`: the summary table at the end of the terminal output;
- :mod:`.json_report`: ``--llmq-report=FILE`` and the strict-JSON rules every file shares;
- :mod:`.markdown`: ``--llmq-report-md=FILE`` or the GitHub step summary;
- :mod:`.files`: the atomic write every output goes through;
- :mod:`.finish`: the end of the session, which writes what the options ask for and
  compares against a quality baseline (:mod:`pytest_llmquant.baseline`).

All of it is a pure function of the session's collected results, so it is tested with
fabricated results and needs no model and no torch.
"""
