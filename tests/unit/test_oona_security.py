"""The broker authentication settings every Oona client takes from the environment."""

from __future__ import annotations

import ssl

import pytest

from esper.oona.security import KafkaSecurityError, kafka_security


def test_no_settings_no_security() -> None:
    assert kafka_security({}) == {}


def test_sasl_plaintext_and_sasl_ssl(tmp_path) -> None:
    secret = tmp_path / "kafka-password"
    secret.write_text("s3cret\n")
    sasl = kafka_security({"ESPER_KAFKA_SASL_MECHANISM": "plain", "ESPER_KAFKA_USERNAME": "esper",
                           "ESPER_KAFKA_PASSWORD_FILE": str(secret)})
    assert sasl == {"sasl_mechanism": "PLAIN", "sasl_plain_username": "esper",
                    "sasl_plain_password": "s3cret", "security_protocol": "SASL_PLAINTEXT"}
    over_tls = kafka_security({"ESPER_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512", "ESPER_KAFKA_USERNAME": "u",
                               "ESPER_KAFKA_PASSWORD": "p", "ESPER_KAFKA_TLS": "true"})
    assert over_tls["security_protocol"] == "SASL_SSL"
    assert isinstance(over_tls["ssl_context"], ssl.SSLContext)


@pytest.mark.parametrize("env, fragment", [
    ({"ESPER_KAFKA_SASL_MECHANISM": "GSSAPI"}, "ESPER_KAFKA_SASL_MECHANISM"),
    ({"ESPER_KAFKA_SASL_MECHANISM": "PLAIN", "ESPER_KAFKA_USERNAME": "u"}, "ESPER_KAFKA_PASSWORD"),
    ({"ESPER_KAFKA_USERNAME": "u"}, "needs ESPER_KAFKA_SASL_MECHANISM"),
    ({"ESPER_KAFKA_SASL_MECHANISM": "PLAIN", "ESPER_KAFKA_USERNAME": "u",
      "ESPER_KAFKA_PASSWORD_FILE": "/nonexistent"}, "cannot read"),
])
def test_settings_that_cannot_work_are_refused(env, fragment) -> None:
    with pytest.raises(KafkaSecurityError, match=fragment):
        kafka_security(env)
