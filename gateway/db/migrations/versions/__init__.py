"""Revisions, oldest first (files rev<NNNN>_<slug>.py); each names the one before it in
``down_revision``."""
