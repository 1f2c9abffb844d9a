"""An empty test directory: ``pytest examples/suite --llmq-suite --llmq-model=M`` runs only
the built-in regression suite (no user tests), which is the README's main job."""
