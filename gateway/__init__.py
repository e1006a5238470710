"""Mandate's gateway: the service every proposed action passes through."""
