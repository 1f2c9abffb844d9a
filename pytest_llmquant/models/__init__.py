"""Where a model comes from: sources (hub id, directory, GGUF, packaged), loading, the
cache of converted weights, devices, and the context-window helpers every gate shares."""
