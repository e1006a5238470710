"""The running gateway: runtime, app, serving."""
