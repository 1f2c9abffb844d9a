"""What a run writes besides the test results, one file per output.

- :mod:`.terminal`: the summary table at the end of the terminal output;
- :mod:`.json_report`: ``--llmq-report=FILE``;
- :mod:`.markdown`: ``--llmq-report-md=FILE`` or the GitHub step summary;
- :mod:`.finish`: the end of the session, which writes what the options ask for and
  compares against a quality baseline (:mod:`pytest_llmquant.baseline`).

Every writer reads one typed input, the run record
(:class:`pytest_llmquant.run.record.RunRecord`), never the plugin's session, so it is
tested with a record of fabricated results and needs no model and no torch. The
strict-JSON rules and the atomic write every file shares are in
:mod:`pytest_llmquant.jsonfiles`, which the baseline and the merge tool use too.
"""
