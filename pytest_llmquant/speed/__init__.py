"""Speed: the decode-step timing gate, its statistics and the benchmark fixture.

:mod:`.sampler` is the pure part (timed pairs in, decision out); :mod:`.timing` runs it
on two model sides; :mod:`.decode_steps` times one torch decode step; :mod:`.stats` holds
the paired statistics; :mod:`.benchmark` is the ``llmq_benchmark`` fixture.
"""
