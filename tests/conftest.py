"""Shared pytest configuration. Fixtures live in tests/fixtures/ as plugins."""

pytest_plugins: list[str] = [
    "tests.fixtures.infra",
]
