"""A decision: its steps, the one orchestration of them, its records."""
