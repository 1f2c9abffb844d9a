"""A run's state, split by job: the model store (:mod:`.store`: loaded models), the
measurement memo (:mod:`.memo`: each measurement once per pair), and the run record
(:mod:`.record`: what the outputs read)."""
