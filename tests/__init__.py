"""Test suite (a package so `tests.fixtures.*` plugins import by name)."""
