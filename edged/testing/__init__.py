"""Test helpers (model builders); used by tests and ``scripts/``, never imported by the daemon."""
