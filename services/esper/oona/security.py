"""How every Oona client (producer, consumer, admin: in the servers and in the training
process) authenticates to the broker, from the environment, as esper.rpc.channels does for
gRPC: one vocabulary for every process of a deployment.

    ESPER_KAFKA_SASL_MECHANISM   PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (unset: no SASL)
    ESPER_KAFKA_USERNAME         the SASL user
    ESPER_KAFKA_PASSWORD         its password (or ESPER_KAFKA_PASSWORD_FILE: a file holding it)
    ESPER_KAFKA_TLS              true: TLS to the broker (SASL_SSL / SSL)
    ESPER_KAFKA_TLS_CA           the CA (PEM) that signs the broker's certificate

The local stack's broker (tansu on loopback) needs none of them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
TRUE_WORDS = ("1", "true", "yes", "on")


class KafkaSecurityError(ValueError):
    """Broker security settings that cannot work; the message names the variable."""


def kafka_security(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Keyword arguments for AIOKafkaProducer/Consumer/AdminClient."""
    env = os.environ if environ is None else environ
    mechanism = env.get("ESPER_KAFKA_SASL_MECHANISM", "").strip().upper()
    tls = env.get("ESPER_KAFKA_TLS", "").strip().lower() in TRUE_WORDS
    kwargs: dict[str, Any] = {}
    if mechanism:
        if mechanism not in MECHANISMS:
            raise KafkaSecurityError(f"ESPER_KAFKA_SASL_MECHANISM: {mechanism!r} is not one of {', '.join(MECHANISMS)}")
        username, password = env.get("ESPER_KAFKA_USERNAME", ""), _password(env)
        if not username or not password:
            raise KafkaSecurityError("ESPER_KAFKA_USERNAME and ESPER_KAFKA_PASSWORD (or _FILE) are "
                                     "required with ESPER_KAFKA_SASL_MECHANISM")
        kwargs.update(sasl_mechanism=mechanism, sasl_plain_username=username, sasl_plain_password=password)
    elif env.get("ESPER_KAFKA_USERNAME"):
        raise KafkaSecurityError("ESPER_KAFKA_USERNAME needs ESPER_KAFKA_SASL_MECHANISM")
    if tls:
        from aiokafka.helpers import create_ssl_context

        kwargs["ssl_context"] = create_ssl_context(cafile=env.get("ESPER_KAFKA_TLS_CA") or None)
    if mechanism or tls:
        kwargs["security_protocol"] = ("SASL_" if mechanism else "") + ("SSL" if tls else "PLAINTEXT")
    return kwargs


def _password(env: Mapping[str, str]) -> str:
    if env.get("ESPER_KAFKA_PASSWORD"):
        return env["ESPER_KAFKA_PASSWORD"]
    path = env.get("ESPER_KAFKA_PASSWORD_FILE")
    if not path:
        return ""
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise KafkaSecurityError(f"ESPER_KAFKA_PASSWORD_FILE: cannot read {path}: {exc.strerror}") from None
