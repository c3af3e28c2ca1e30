"""Log lines on stderr: readable text, or one JSON object per line for collectors.

A JSON line holds time, level, logger, message, every `extra` field the call
passed (attempt lines carry instance_id, notification_id, attempt, outcome, ...)
and, when there is one, the exception as a string.

Whatever the format, every configured secret (Settings.secret_values) and
every one-time code being sent right now (config.masking.IN_FLIGHT) is masked
out of the finished line, whichever logger wrote it and at whatever level:
the channels keep secrets out of their errors, and this is the net under them
that no new channel or library can slip through.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

from tidings.config.masking import IN_FLIGHT, MASK

LogFormat = Literal["text", "json"]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Attributes every LogRecord has; anything else on a record came in as `extra`.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}
# Loggers that say too much at INFO: httpx logs every request URL, query tokens included.
_NOISY = ("pgserver", "psycopg.pool", "httpx", "httpcore")
_HANDLER_NAME = "tidings-stderr"


class _Redacting:
    """Masks secrets out of a finished line, longest first (a secret may contain another)."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self._secrets: list[str] = []
        for secret in sorted(set(secrets), key=len, reverse=True):
            # JSON escapes some characters; mask the escaped spelling as well.
            for spelling in (secret, json.dumps(secret, ensure_ascii=False)[1:-1]):
                if spelling and spelling not in self._secrets:
                    self._secrets.append(spelling)

    def redact(self, line: str) -> str:
        for secret in self._secrets:
            if secret in line:
                line = line.replace(secret, MASK)
        return IN_FLIGHT.mask(line)


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message`, secrets masked."""

    def __init__(self, *, secrets: Iterable[str] = ()) -> None:
        super().__init__(TEXT_FORMAT)
        self._redacting = _Redacting(secrets)
        self._second: tuple[int, str] = (-1, "")  # the last second written, and its text

    def format(self, record: logging.LogRecord) -> str:
        return self._redacting.redact(super().format(record))

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """As logging.Formatter writes it (`2024-05-01 14:00:00,123`), the date and
        time made once a second rather than once a line."""
        if datefmt:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        last, text = self._second
        if second != last:
            text = time.strftime(self.default_time_format, self.converter(record.created))
            self._second = (second, text)
        with_msecs = self.default_msec_format
        return with_msecs % (text, record.msecs) if with_msecs else text


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, extras, exception."""

    def __init__(self, *, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._redacting = _Redacting(secrets)
        # What json.dumps(document, default=str, ensure_ascii=False) would build per line.
        self._encoder = json.JSONEncoder(default=str, ensure_ascii=False)

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_") and key not in document:
                document[key] = value
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            document["exception"] = record.exc_text
        if record.stack_info:
            document["stack"] = self.formatStack(record.stack_info)
        line = self._encoder.encode(document)
        return self._redacting.redact(line)


def configure_logging(
    *,
    level: str,
    log_format: LogFormat,
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
) -> None:
    """Send tidings' logs (and its libraries') to stderr in the chosen format."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    formatter: logging.Formatter = (
        JsonFormatter(secrets=secrets) if log_format == "json" else TextFormatter(secrets=secrets)
    )
    handler.setFormatter(formatter)
    handler.set_name(_HANDLER_NAME)
    root = logging.getLogger()
    for old in list(root.handlers):  # ours from an earlier call; others' stay
        if old.get_name() == _HANDLER_NAME:
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Neither format shows where a line was logged from, nor the thread or process
    # that logged it: no record looks them up (the logging HOWTO's "Optimization";
    # the workers log a line per notification, and each lookup was a system call
    # or a walk up the stack). Python's own tracebacks are unaffected.
    logging._srcfile = None  # the HOWTO's documented switch
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    # Python's warnings go through logging too, so with json every line is an object.
    logging.captureWarnings(log_format == "json")
    for noisy in _NOISY:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # The pool warns on every failed reconnect (several a second during an
    # outage); tidings' own outage lines say it once. `--log-level debug` shows them.
    logging.getLogger("psycopg.pool").setLevel(
        logging.DEBUG if level.upper() == "DEBUG" else logging.ERROR
    )


def logs_as_json() -> bool:
    """Whether configure_logging chose JSON lines."""
    return any(isinstance(h.formatter, JsonFormatter) for h in logging.getLogger().handlers)
