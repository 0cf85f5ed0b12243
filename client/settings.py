"""Connection settings shared by `Client` and `AsyncClient`.

The message size and keepalive values match the daemon's defaults: the
daemon accepts messages of its document size limit (4 MiB) plus 64 KiB for
the rest of the message, and permits a ping every 10 seconds, so the client
pings every 30 seconds even between calls and gives up on a connection that
does not acknowledge a ping within 10 seconds.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import grpc

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DEFAULT_TIMEOUT",
    "ClientSettings",
    "RetryPolicy",
]

DEFAULT_MAX_DOCUMENT_BYTES = 4 * 1024 * 1024
DEFAULT_MAX_MESSAGE_BYTES = DEFAULT_MAX_DOCUMENT_BYTES + 64 * 1024
DEFAULT_TIMEOUT = 10.0
"""The deadline of each unary call attempt, in seconds."""


@dataclass(frozen=True)
class RetryPolicy:
    """The retry rule of calls that are safe to repeat, after UNAVAILABLE.

    The wait before retry ``n`` (from 0) is drawn uniformly from 0 to
    ``min(max_backoff, initial_backoff * multiplier ** n)`` seconds ("full
    jitter"), so that clients cut off together do not come back together.
    Retrying stops after ``max_attempts`` attempts in all, or when the next
    attempt would start more than ``max_elapsed`` seconds after the first.
    """

    max_attempts: int = 10
    initial_backoff: float = 0.1
    max_backoff: float = 5.0
    multiplier: float = 2.0
    max_elapsed: float = 30.0

    def backoff(self, retry: int) -> float:
        """Return the wait in seconds before retry number ``retry``, from 0."""
        ceiling = min(self.max_backoff, self.initial_backoff * self.multiplier**retry)
        return random.uniform(0.0, ceiling)

    def allows(self, attempts: int, elapsed: float, wait: float) -> bool:
        """Return whether another attempt may start after ``wait`` seconds."""
        return attempts < self.max_attempts and elapsed + wait <= self.max_elapsed


NO_RETRY = RetryPolicy(max_attempts=1)


@dataclass(frozen=True)
class ClientSettings:
    """The daemon's address and the options of the connection to it.

    Attributes:
        address: The daemon's ``host:port``.
        timeout: The deadline of each unary call attempt, in seconds.
        retry: How calls that are safe to repeat are retried.
        token: A bearer token sent as ``authorization: Bearer <token>``.
        tls: Whether to use TLS; implied by any of the PEM fields.
        root_certificates: PEM of the CAs to trust; ``None`` means the
            system's roots.
        certificate_chain: PEM of the client certificate, for mutual TLS.
        private_key: PEM of the client certificate's key, for mutual TLS.
        server_name_override: The name to check the server certificate
            against instead of the host in ``address``.
        max_message_bytes: The largest message sent or received.
        options: More gRPC channel options, added after the defaults.
    """

    address: str = "127.0.0.1:50051"
    timeout: float = DEFAULT_TIMEOUT
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    token: str | None = field(default=None, repr=False)
    tls: bool = False
    root_certificates: bytes | None = field(default=None, repr=False)
    certificate_chain: bytes | None = field(default=None, repr=False)
    private_key: bytes | None = field(default=None, repr=False)
    server_name_override: str | None = None
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def uses_tls(self) -> bool:
        return self.tls or any(
            value is not None
            for value in (
                self.root_certificates,
                self.certificate_chain,
                self.private_key,
            )
        )

    def channel_options(self) -> list[tuple[str, Any]]:
        """Return the gRPC channel options."""
        options: list[tuple[str, Any]] = [
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.keepalive_permit_without_calls", 1),
            # gRPC's own reconnect backoff grows to 120 s; a daemon that
            # restarts should be found again within a few seconds.
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 2_000),
        ]
        if self.server_name_override:
            options.append(("grpc.ssl_target_name_override", self.server_name_override))
        options.extend(self.options)
        return options

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.root_certificates,
            private_key=self.private_key,
            certificate_chain=self.certificate_chain,
        )

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Return the metadata sent with every call."""
        if self.token is None:
            return ()
        return (("authorization", f"Bearer {self.token}"),)
