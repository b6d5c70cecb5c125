"""Log lines as text or JSON objects (QUEUEWATCH_LOG_FORMAT), the same for faust's worker."""

from __future__ import annotations

import io
import json
import logging
import logging.config

from queuewatch import redaction
from queuewatch.logformat import QueuewatchJsonFormatter, faust_logging_config, process_name


def render(formatter: logging.Formatter, message: str, *args: object, **extra: object) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    logger = logging.getLogger("queuewatch.test.logformat")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        logger.warning(message, *args, extra=extra)
    finally:
        logger.removeHandler(handler)
    return stream.getvalue()


def test_a_json_line_holds_the_fixed_fields_the_message_and_its_extras() -> None:
    line = render(QueuewatchJsonFormatter("aggregator"), "lag %d on %s", 3, "p1", partition=1)
    obj = json.loads(line)
    assert obj["event"] == "lag 3 on p1"
    assert obj["level"] == "WARNING"
    assert obj["logger"] == "queuewatch.test.logformat"
    assert obj["process"] == "aggregator"
    assert isinstance(obj["pid"], int)
    assert obj["partition"] == 1
    assert obj["time"].endswith("Z") and "T" in obj["time"]
    assert line.count("\n") == 1  # one object per line


def test_secrets_are_masked_in_json_lines_too() -> None:
    redaction.install(["s3cret-pass"])
    line = render(QueuewatchJsonFormatter("sink"), "connecting with s3cret-pass")
    assert "s3cret-pass" not in line
    assert json.loads(line)["event"] == f"connecting with {redaction.MASK}"


def test_the_faust_worker_config_builds_the_same_formatter() -> None:
    assert faust_logging_config("INFO", "text", "aggregator") is None
    config = faust_logging_config("INFO", "json", "aggregator")
    assert config is not None
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        logging.config.dictConfig(config)
        ours = [h for h in root.handlers if isinstance(h.formatter, QueuewatchJsonFormatter)]
        assert len(ours) == 1 and ours[0].formatter.process == "aggregator"  # type: ignore[union-attr]
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def test_the_process_is_the_command_run() -> None:
    assert process_name(["queuewatch", "sink", "all"]) == "sink"
    assert process_name(["python", "-m", "queuewatch"]) == "queuewatch"
