"""Earned autonomy: terms, levels, figures, audits, governance."""
