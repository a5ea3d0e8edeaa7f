"""The functional core: pure, deterministic, no I/O."""
