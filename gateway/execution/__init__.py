"""Carrying allowed actions out: routing and the dispatcher."""
