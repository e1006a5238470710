"""A policy bundle's life: checks, activation, shadow, replay."""
