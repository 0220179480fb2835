"""What every Esper server shares: typed config, server bootstrap, health, reflection,
tracing, metrics and structured logging."""
