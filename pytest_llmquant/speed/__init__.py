"""Speed: the decode-step timing gate, its statistics and the benchmark fixture.

:mod:`.sampler` is the pure part (timed pairs in, verdict out); :mod:`.timing` runs it on
two model sides (:mod:`pytest_llmquant.sides`); :mod:`.stats` holds the paired
statistics; :mod:`.contention` reads how busy the CPU was while sampling;
:mod:`.benchmark` is the ``llmq_benchmark`` fixture.
"""
