"""Carrying allowed actions out: routing and the dispatcher; the view of an action."""
