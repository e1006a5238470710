"""Held actions: votes, quorum, expiry, re-evaluation."""
