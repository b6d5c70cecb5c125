"""How every queuewatch client authenticates to Kafka and encrypts its traffic: one place.

The producer SDK, ``publish``, the simulator, the sinks' consumers, the admin calls
(``topics``, ``status``, the broker probes) and the aggregator's faust app all take their
security from :class:`KafkaSecurity`, built once from the settings, so no client can be left
talking PLAINTEXT to a broker that was secured (the broker would refuse it anyway: a
PLAINTEXT client on a SASL_SSL port gets no answer at all, which is why
:func:`connection_hint` exists).

Two forms come out of it: keyword arguments for kafka-python (:meth:`KafkaSecurity.kafka_python`)
and faust's ``broker_credentials`` (:meth:`KafkaSecurity.faust_credentials`), which faust turns
into aiokafka's. Both use one :class:`ssl.SSLContext`, so the CA file, the client certificate
and hostname checking mean the same thing in every client.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import SecretStr

from queuewatch.errors import ConfigurationError
from queuewatch.settings import CommonSettings, read_secret_file

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"]


@dataclass(frozen=True)
class KafkaSecurity:
    """A client's security settings; ``password`` stays a SecretStr so a repr never shows it."""

    protocol: SecurityProtocol = "PLAINTEXT"
    mechanism: SaslMechanism = "SCRAM-SHA-512"
    username: str = ""
    password: SecretStr = field(default_factory=lambda: SecretStr(""))
    cafile: Path | None = None
    certfile: Path | None = None
    keyfile: Path | None = None

    def __post_init__(self) -> None:
        if self.uses_sasl and not (self.username and self.password.get_secret_value()):
            raise ConfigurationError(
                f"QUEUEWATCH_KAFKA_SECURITY_PROTOCOL is {self.protocol} but the SASL user or "
                "password is empty; set QUEUEWATCH_KAFKA_SASL_USERNAME and "
                "QUEUEWATCH_KAFKA_SASL_PASSWORD_FILE (or _PASSWORD)"
            )
        if (self.certfile is None) != (self.keyfile is None):
            raise ConfigurationError(
                "a client certificate needs both QUEUEWATCH_KAFKA_SSL_CERTFILE and "
                "QUEUEWATCH_KAFKA_SSL_KEYFILE; set both or neither"
            )

    @classmethod
    def from_settings(cls, settings: CommonSettings) -> KafkaSecurity:
        """The security of ``settings``; the password file, when set, wins over the variable."""
        password = settings.kafka_sasl_password
        if settings.kafka_sasl_password_file is not None:
            password = SecretStr(read_secret_file(settings.kafka_sasl_password_file, "KAFKA_SASL"))
        return cls(
            protocol=settings.kafka_security_protocol,
            mechanism=settings.kafka_sasl_mechanism,
            username=settings.kafka_sasl_username,
            password=password,
            cafile=settings.kafka_ssl_cafile,
            certfile=settings.kafka_ssl_certfile,
            keyfile=settings.kafka_ssl_keyfile,
        )

    @property
    def uses_sasl(self) -> bool:
        """True for SASL_PLAINTEXT and SASL_SSL."""
        return self.protocol.startswith("SASL_")

    @property
    def uses_tls(self) -> bool:
        """True for SSL and SASL_SSL."""
        return self.protocol in ("SSL", "SASL_SSL")

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context of every client (None without TLS): the CA, the optional client
        certificate, hostname checking on (the broker's certificate must name its address)."""
        if not self.uses_tls:
            return None
        try:
            context = ssl.create_default_context(
                cafile=str(self.cafile) if self.cafile is not None else None
            )
            if self.certfile is not None and self.keyfile is not None:
                context.load_cert_chain(str(self.certfile), str(self.keyfile))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError(
                f"cannot load the Kafka TLS files ({exc}); check QUEUEWATCH_KAFKA_SSL_CAFILE, "
                "_CERTFILE and _KEYFILE (PEM files this user can read)"
            ) from None
        return context

    def kafka_python(self) -> dict[str, Any]:
        """Keyword arguments for kafka-python's clients (producer, consumer, admin)."""
        kwargs: dict[str, Any] = {"security_protocol": self.protocol}
        context = self.ssl_context()
        if context is not None:
            kwargs["ssl_context"] = context
        if self.uses_sasl:
            kwargs["sasl_mechanism"] = self.mechanism
            kwargs["sasl_plain_username"] = self.username
            kwargs["sasl_plain_password"] = self.password.get_secret_value()
        return kwargs

    def librdkafka(self) -> dict[str, str]:
        """Settings for confluent-kafka's clients (librdkafka names), as kafka_python() does.

        librdkafka takes the CA and client certificate as files, not as an ``SSLContext``;
        it checks the broker's host name by default, as our context does.
        """
        config: dict[str, str] = {"security.protocol": self.protocol}
        if self.uses_tls:
            config["ssl.endpoint.identification.algorithm"] = "https"
            if self.cafile is not None:
                config["ssl.ca.location"] = str(self.cafile)
            if self.certfile is not None and self.keyfile is not None:
                config["ssl.certificate.location"] = str(self.certfile)
                config["ssl.key.location"] = str(self.keyfile)
        if self.uses_sasl:
            config["sasl.mechanism"] = self.mechanism
            config["sasl.username"] = self.username
            config["sasl.password"] = self.password.get_secret_value()
        return config

    def aiokafka(self) -> dict[str, Any]:
        """Keyword arguments for an aiokafka client of ours (named as kafka-python names them)."""
        return self.kafka_python()

    def faust_credentials(self) -> Any:
        """faust's ``broker_credentials`` (None for PLAINTEXT): faust hands them to aiokafka."""
        from faust.auth import SASLCredentials, SSLCredentials

        context = self.ssl_context()
        if self.uses_sasl:
            return SASLCredentials(
                username=self.username,
                password=self.password.get_secret_value(),
                ssl_context=context,  # None: SASL_PLAINTEXT; a context: SASL_SSL
                mechanism=self.mechanism,
            )
        if context is not None:
            return SSLCredentials(context)
        return None


def client_security(settings: CommonSettings) -> dict[str, Any]:
    """kafka-python keyword arguments for ``settings``: the one call every client makes."""
    return KafkaSecurity.from_settings(settings).kafka_python()


def connection_hint(settings: CommonSettings | KafkaSecurity) -> str:
    """What to check when a broker does not answer or refuses us, for an error message.

    A broker that requires TLS or SASL does not answer a client that speaks another protocol:
    the client only sees no answer, so the hint names the security settings too.
    """
    security = settings if isinstance(settings, KafkaSecurity) else _security_or_none(settings)
    protocol = security.protocol if security is not None else "?"
    if protocol == "PLAINTEXT":
        return (
            "if the broker requires TLS or SASL, set QUEUEWATCH_KAFKA_SECURITY_PROTOCOL "
            "(and the QUEUEWATCH_KAFKA_SASL_* and _SSL_* settings)"
        )
    return (
        f"connecting with {protocol}: check that the broker's listener at that address speaks "
        f"{protocol}, QUEUEWATCH_KAFKA_SASL_USERNAME and the password, and "
        "QUEUEWATCH_KAFKA_SSL_CAFILE"
    )


def _security_or_none(settings: CommonSettings) -> KafkaSecurity | None:
    try:
        return KafkaSecurity.from_settings(settings)
    except ConfigurationError:
        return None


class RefusalLog(logging.Handler):
    """Records the broker refusing our credentials, which kafka-python only logs.

    kafka-python retries a refused login until its timeout and then raises the same
    ``KafkaTimeoutError`` as for a broker that is down, so a wrong password would read as
    "Kafka is not there". Its connection manager logs the refusal at ERROR
    (``Connection failed: ... SASL authentication failed``): while attached, this handler
    keeps those lines, and :func:`describe_failure` names the cause. Attached to
    ``kafka.net.manager`` with its own level, so it hears the refusal even when the
    ``kafka`` logger is silenced for a probe, and it does not propagate them twice.
    """

    LOGGER = "kafka.net.manager"

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.refusals: list[str] = []
        self._previous: tuple[int, bool] | None = None

    def emit(self, record: logging.LogRecord) -> None:
        """Keep a refusal (a few are enough)."""
        text = record.getMessage()
        if _is_refusal(text) and len(self.refusals) < 5:
            self.refusals.append(text)

    def attach(self) -> RefusalLog:
        """Start listening; returns self."""
        logger = logging.getLogger(self.LOGGER)
        self._previous = (logger.level, logger.propagate)
        logger.addHandler(self)
        if logger.getEffectiveLevel() > logging.ERROR:
            logger.setLevel(logging.ERROR)
            logger.propagate = False  # the caller silenced kafka: keep it silent
        return self

    def detach(self) -> None:
        """Stop listening and restore the logger."""
        logger = logging.getLogger(self.LOGGER)
        logger.removeHandler(self)
        if self._previous is not None:
            logger.setLevel(self._previous[0])
            logger.propagate = self._previous[1]
            self._previous = None

    def __enter__(self) -> RefusalLog:
        return self.attach()

    def __exit__(self, *args: object) -> None:
        self.detach()


def _is_refusal(text: str) -> bool:
    lowered = text.lower()
    return "authentication failed" in lowered or "sasl_authentication_failed" in lowered


def transport_answers(bootstrap: str, security: KafkaSecurity, timeout_s: float = 3.0) -> bool:
    """True when the first bootstrap server takes a TCP connection, and a TLS handshake with
    our context when the protocol has TLS: the part of a connection that comes before a login."""
    import socket

    first = bootstrap.split(",")[0].strip()
    host, _, port = first.rpartition(":")
    host = host.strip("[]")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s) as sock:
            context = security.ssl_context()
            if context is None:
                return True
            with context.wrap_socket(sock, server_hostname=host):
                return True
    except (OSError, ValueError, ConfigurationError):
        return False


def describe_failure(
    bootstrap: str,
    security: KafkaSecurity,
    exc: BaseException,
    refusals: RefusalLog | None = None,
) -> str:
    """One line for a person: the broker refused our login, or did not answer, and what to do."""
    refused = [r for r in (refusals.refusals if refusals else []) if r] or (
        [str(exc)] if _is_refusal(str(exc)) else []
    )
    # A broker refusing a SCRAM login just closes the connection, and kafka-python then
    # reports "Unable to bootstrap" like for a broker that is down. If the address takes a
    # TCP (and TLS) connection from us, the broker is there: what it refused is the login.
    if not refused and security.uses_sasl and transport_answers(bootstrap, security):
        refused = ["the connection was accepted, the login was not"]
    if refused:
        return (
            f"Kafka at {bootstrap} refused the login of SASL user {security.username!r} "
            f"({security.mechanism}: {refused[0]}); check "
            "QUEUEWATCH_KAFKA_SASL_USERNAME, QUEUEWATCH_KAFKA_SASL_PASSWORD_FILE (or "
            "_PASSWORD) and QUEUEWATCH_KAFKA_SASL_MECHANISM"
        )
    return (
        f"cannot reach Kafka at {bootstrap} ({type(exc).__name__}: {exc}); start it with "
        f"`queuewatch up` or set QUEUEWATCH_KAFKA_BOOTSTRAP; {connection_hint(security)}"
    )


__all__ = [
    "KafkaSecurity",
    "RefusalLog",
    "SaslMechanism",
    "SecurityProtocol",
    "client_security",
    "connection_hint",
    "describe_failure",
    "transport_answers",
]
