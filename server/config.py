"""Settings of the daemon, from command-line flags and EDITSTORE_* variables.

Each setting has a flag and an environment variable named after it, so
``--max-document-bytes`` is also ``EDITSTORE_MAX_DOCUMENT_BYTES``. A flag
wins over the variable, the variable over the default.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable
from typing import Any

ENV_PREFIX = "EDITSTORE_"
DEFAULT_DATABASE = "sqlite:///editstore-data/editstore.db"
DEFAULT_LISTEN = "127.0.0.1:50051"
MESSAGE_OVERHEAD_BYTES = 64 * 1024


@dataclasses.dataclass(frozen=True)
class Settings:
    """Settings of one daemon; the defaults suit one agent on one machine."""

    listen: str = DEFAULT_LISTEN
    database: str = DEFAULT_DATABASE
    migrate: bool = False
    max_document_bytes: int = 4 * 1024 * 1024
    state_history: int = 100
    heartbeat_seconds: float = 10.0
    max_streams: int = 1000
    watch_buffer: int = 256
    reader_threads: int = 4
    grace_seconds: float = 10.0
    max_database_bytes: int = 0
    request_id_retention_hours: float = 24.0 * 7
    auth_tokens: tuple[str, ...] = ()
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    log_level: str = "info"
    metrics_listen: str = ""

    @property
    def max_message_bytes(self) -> int:
        """Return the gRPC message size limit: a full document plus framing."""
        return self.max_document_bytes + MESSAGE_OVERHEAD_BYTES


_HELP = {
    "listen": "host:port to listen on",
    "database": "sqlite:///PATH, a plain file path, or postgresql://USER@HOST/DB",
    "migrate": "apply pending migrations before serving",
    "max_document_bytes": "largest state document in bytes, as compact JSON "
    "(at least 1024)",
    "state_history": "how many versions of each state document to keep",
    "heartbeat_seconds": "seconds between heartbeats on an idle watch",
    "max_streams": "most streams (watches and update streams) open at once",
    "watch_buffer": "events buffered per watcher before it is sent a snapshot",
    "reader_threads": "threads that run database reads",
    "grace_seconds": "seconds that calls in flight get to finish on SIGTERM",
    "max_database_bytes": "quota of the SQLite database's pages in bytes, "
    "not counting its write-ahead log file; 0: none",
    "request_id_retention_hours": "hours a request id is remembered for retries",
    "auth_tokens": "comma-separated bearer tokens; empty: no authentication",
    "tls_cert": "path of the server's PEM certificate chain; enables TLS",
    "tls_key": "path of the server's PEM private key",
    "tls_client_ca": "path of a PEM CA bundle; clients must then present a "
    "certificate it signed",
    "log_level": "debug, info, warning or error",
    "metrics_listen": "host:port to serve Prometheus metrics on, at /metrics; "
    "empty: no metrics endpoint",
}


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def _parse_tokens(text: str) -> tuple[str, ...]:
    return tuple(token.strip() for token in text.split(",") if token.strip())


def _converter(field: dataclasses.Field[Any]) -> Callable[[str], Any]:
    if field.name == "auth_tokens":
        return _parse_tokens
    if field.type == "bool":
        return _parse_bool
    if field.type == "int":
        return int
    if field.type == "float":
        return float
    return str


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per setting, with its variable and default in the help."""
    for field in dataclasses.fields(Settings):
        flag = "--" + field.name.replace("_", "-")
        env = ENV_PREFIX + field.name.upper()
        default = field.default
        shown = ",".join(default) if isinstance(default, tuple) else repr(default)
        help_text = f"{_HELP[field.name]} (env {env}; default {shown or 'none'})"
        if field.type == "bool":
            parser.add_argument(flag, action="store_true", default=None, help=help_text)
        else:
            parser.add_argument(
                flag, type=_converter(field), default=None, help=help_text
            )


def from_arguments(
    args: argparse.Namespace, environ: dict[str, str] | None = None
) -> Settings:
    """Build settings from parsed flags, then variables, then defaults.

    Raises:
        ValueError: a variable holds a value of the wrong type, or a setting
            is out of range; the message names it.
    """
    environ = dict(os.environ if environ is None else environ)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(Settings):
        flag_value = getattr(args, field.name, None)
        env = ENV_PREFIX + field.name.upper()
        if flag_value is not None:
            values[field.name] = flag_value
        elif env in environ:
            try:
                values[field.name] = _converter(field)(environ[env])
            except ValueError as error:
                raise ValueError(f"invalid {env}={environ[env]!r}: {error}") from None
    settings = Settings(**values)
    validate(settings)
    return settings


def validate(settings: Settings) -> None:
    """Raise ValueError naming the first setting that is out of range."""
    checks = [
        ("max_document_bytes", settings.max_document_bytes >= 1024, ">= 1024"),
        ("state_history", settings.state_history >= 1, ">= 1"),
        ("heartbeat_seconds", settings.heartbeat_seconds > 0, "> 0"),
        ("max_streams", settings.max_streams >= 1, ">= 1"),
        ("watch_buffer", settings.watch_buffer >= 1, ">= 1"),
        ("reader_threads", settings.reader_threads >= 1, ">= 1"),
        ("grace_seconds", settings.grace_seconds >= 0, ">= 0"),
        ("max_database_bytes", settings.max_database_bytes >= 0, ">= 0"),
        (
            "request_id_retention_hours",
            settings.request_id_retention_hours > 0,
            "> 0",
        ),
    ]
    for name, ok, rule in checks:
        if not ok:
            value = getattr(settings, name)
            flag = "--" + name.replace("_", "-")
            env = ENV_PREFIX + name.upper()
            raise ValueError(f"{flag} ({env}) must be {rule}, got {value}")
    for name, example in (("listen", DEFAULT_LISTEN), ("metrics_listen", "")):
        address = getattr(settings, name)
        if name == "metrics_listen" and not address:
            continue
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit() or int(port) > 65535:
            flag = "--" + name.replace("_", "-")
            raise ValueError(
                f"{flag} must be HOST:PORT with a port from 0 to 65535, such as "
                f"{example or '127.0.0.1:9464'}, got {address!r}"
            )
    if bool(settings.tls_cert) != bool(settings.tls_key):
        raise ValueError("--tls-cert and --tls-key must be given together")
    if settings.tls_client_ca and not settings.tls_cert:
        raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
    if settings.log_level.lower() not in ("debug", "info", "warning", "error"):
        raise ValueError(
            f"--log-level must be debug, info, warning or error, "
            f"got {settings.log_level!r}"
        )
