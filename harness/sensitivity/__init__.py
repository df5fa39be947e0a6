"""Which parts of a model NVFP4 hurts: the measurement (measure) and `harness sensitivity` (command)."""
