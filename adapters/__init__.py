"""Executors' plug-ins: how an approved action is carried out and how people are notified."""
