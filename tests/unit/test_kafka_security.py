"""Kafka client security from the settings: one builder, the same meaning in every client."""

from __future__ import annotations

from pathlib import Path

import pytest
from faust.auth import SASLCredentials, SSLCredentials
from pydantic import SecretStr

from queuewatch.errors import ConfigurationError
from queuewatch.kafka.security import KafkaSecurity, connection_hint
from queuewatch.kafka.topics import topic_specs
from queuewatch.settings import CommonSettings


def test_plaintext_is_the_default_and_adds_nothing_but_the_protocol() -> None:
    security = KafkaSecurity.from_settings(CommonSettings())
    assert security.kafka_python() == {"security_protocol": "PLAINTEXT"}
    assert security.faust_credentials() is None


def test_sasl_ssl_gives_kafka_python_the_mechanism_user_password_and_a_tls_context() -> None:
    security = KafkaSecurity(
        protocol="SASL_SSL", username="qw", password=SecretStr("pw"), mechanism="SCRAM-SHA-256"
    )
    kwargs = security.kafka_python()
    assert kwargs["security_protocol"] == "SASL_SSL"
    assert kwargs["sasl_mechanism"] == "SCRAM-SHA-256"
    assert (kwargs["sasl_plain_username"], kwargs["sasl_plain_password"]) == ("qw", "pw")
    assert kwargs["ssl_context"].check_hostname is True


def test_librdkafka_gets_the_same_login_files_and_host_name_checking() -> None:
    security = KafkaSecurity(
        protocol="SASL_SSL",
        username="qw",
        password=SecretStr("pw"),
        mechanism="SCRAM-SHA-512",
        cafile=Path("ca.pem"),
        certfile=Path("client.pem"),
        keyfile=Path("client.key"),
    )
    assert security.librdkafka() == {
        "security.protocol": "SASL_SSL",
        "ssl.endpoint.identification.algorithm": "https",
        "ssl.ca.location": "ca.pem",
        "ssl.certificate.location": "client.pem",
        "ssl.key.location": "client.key",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "qw",
        "sasl.password": "pw",
    }
    assert KafkaSecurity().librdkafka() == {"security.protocol": "PLAINTEXT"}


def test_faust_gets_sasl_credentials_with_tls_for_sasl_ssl_and_without_for_sasl_plaintext() -> None:
    tls = KafkaSecurity(protocol="SASL_SSL", username="qw", password=SecretStr("pw"))
    creds = tls.faust_credentials()
    assert isinstance(creds, SASLCredentials)
    assert creds.protocol.value == "SASL_SSL" and creds.mechanism.value == "SCRAM-SHA-512"
    plain = KafkaSecurity(
        protocol="SASL_PLAINTEXT", mechanism="PLAIN", username="qw", password=SecretStr("pw")
    )
    creds = plain.faust_credentials()
    assert isinstance(creds, SASLCredentials)
    assert creds.protocol.value == "SASL_PLAINTEXT" and creds.mechanism.value == "PLAIN"
    assert isinstance(KafkaSecurity(protocol="SSL").faust_credentials(), SSLCredentials)


def test_the_password_file_wins_over_the_variable(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("from-file\n")
    settings = CommonSettings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_username="qw",
        kafka_sasl_password=SecretStr("from-env"),
        kafka_sasl_password_file=secret,
    )
    assert KafkaSecurity.from_settings(settings).password.get_secret_value() == "from-file"


def test_an_unreadable_password_file_names_the_setting(tmp_path: Path) -> None:
    settings = CommonSettings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_username="qw",
        kafka_sasl_password_file=tmp_path / "missing",
    )
    with pytest.raises(ConfigurationError, match="QUEUEWATCH_KAFKA_SASL_PASSWORD_FILE"):
        KafkaSecurity.from_settings(settings)


def test_sasl_without_a_password_is_refused_before_any_connection() -> None:
    with pytest.raises(ConfigurationError, match="QUEUEWATCH_KAFKA_SASL_USERNAME"):
        KafkaSecurity(protocol="SASL_SSL", username="qw")


def test_a_missing_ca_file_is_a_configuration_error(tmp_path: Path) -> None:
    security = KafkaSecurity(protocol="SSL", cafile=tmp_path / "nope.pem")
    with pytest.raises(ConfigurationError, match="QUEUEWATCH_KAFKA_SSL_CAFILE"):
        security.kafka_python()


def test_the_password_never_appears_in_a_repr() -> None:
    security = KafkaSecurity(protocol="SASL_SSL", username="qw", password=SecretStr("hunter2"))
    assert "hunter2" not in repr(security)
    assert "hunter2" not in repr(security.faust_credentials())


def test_a_plaintext_client_is_told_about_the_security_settings() -> None:
    assert "QUEUEWATCH_KAFKA_SECURITY_PROTOCOL" in connection_hint(KafkaSecurity())


def test_every_topic_gets_the_replication_factor_and_min_insync_replicas() -> None:
    specs = topic_specs(CommonSettings(kafka_replication_factor=3, kafka_min_insync_replicas=2))
    assert {s.replication for s in specs} == {3}
    assert {s.configs["min.insync.replicas"] for s in specs} == {"2"}


def test_min_insync_above_the_replication_factor_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="QUEUEWATCH_KAFKA_MIN_INSYNC_REPLICAS"):
        topic_specs(CommonSettings(kafka_replication_factor=1, kafka_min_insync_replicas=2))
