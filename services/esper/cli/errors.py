"""Errors every `esper` subcommand may raise. In a module of its own so that the class is the
same object whether the CLI runs as `esper` or as `python -m esper.cli.main`."""


class UsageError(Exception):
    """A bad CLI input; printed without a traceback, exit code 2."""
