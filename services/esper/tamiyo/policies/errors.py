"""Errors of Tamiyo's policies, importable without torch (the server imports them at start;
the learned policy's modules, which need torch and torch-geometric, load on first use)."""


class PolicyArtifactError(ValueError):
    """A policy file that must not be loaded, with the reason."""
