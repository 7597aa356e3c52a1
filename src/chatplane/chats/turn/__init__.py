"""The turn engine: lock -> read -> context -> respond -> write (``engine.Turns``)."""
