"""Errors of the local infrastructure launchers.

`InfraConfigError` is bad input (a bad port, an unwritable state dir, a port already taken):
the caller should report it as a usage error. Everything else is `InfraError`.
"""

from __future__ import annotations


class InfraError(Exception):
    """A local infrastructure process could not be started, probed or stopped."""


class InfraConfigError(InfraError):
    """Bad input to a launcher: the message names the offending value."""


class PortInUseError(InfraConfigError):
    """A port a component needs is already bound by another process."""


class MissingBinaryError(InfraError):
    """A server binary the launcher needs is not installed."""


class ReadinessError(InfraError):
    """A process started but did not become ready; the message quotes its log."""
