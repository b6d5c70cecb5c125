"""Secrets out of every log line, whoever writes it.

kafka-python logs a client's whole configuration at DEBUG, SASL password included
(``Starting KafkaAdminClient with configuration: {... 'sasl_plain_password': ...}``), and any
driver may quote a URL in an exception. Rather than trust every library, each queuewatch
process installs a log record factory that masks the secrets it was configured with: the Kafka
SASL password and the ClickHouse URL's password. A record factory, not a handler filter, so it
also covers the handlers faust's worker installs. It runs only for records whose level is
enabled, so quiet loggers cost nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

#: What a secret is replaced with.
MASK = "***"
#: Shorter values are not masked: replacing "a" everywhere would garble every line, and a
#: password that short is not a secret anyway.
MIN_SECRET_LENGTH = 4

_secrets: set[str] = set()
_installed = False


def mask(text: str) -> str:
    """``text`` with every known secret replaced by ``***``."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def install(secrets: Iterable[str]) -> None:
    """Mask ``secrets`` in every log record from now on (adds to those installed before)."""
    global _installed
    _secrets.update(s for s in secrets if len(s) >= MIN_SECRET_LENGTH)
    if _installed or not _secrets:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        if _secrets:
            message = record.getMessage()
            masked = mask(message)
            if masked != message:
                record.msg, record.args = masked, None
        return record

    logging.setLogRecordFactory(factory)
    _installed = True


def configured_secrets() -> list[str]:
    """The secrets of this process's settings (each form a log line could carry)."""
    from urllib.parse import unquote, urlsplit

    from queuewatch.errors import QueuewatchError
    from queuewatch.settings import CommonSettings, read_secret_file

    settings = CommonSettings()
    out = [settings.kafka_sasl_password.get_secret_value()]
    try:
        if settings.kafka_sasl_password_file is not None:
            out.append(read_secret_file(settings.kafka_sasl_password_file, "KAFKA_SASL"))
        password = urlsplit(settings.resolved_clickhouse_url).password
    except (QueuewatchError, ValueError):
        password = None  # the command itself reports the unreadable file
    if password:
        out += [password, unquote(password)]
    return [s for s in out if s]
