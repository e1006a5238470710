"""Examples for executors, not loaded by the gateway: ``receiver``, a webhook endpoint."""
