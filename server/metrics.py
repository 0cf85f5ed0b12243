"""Prometheus metrics of the daemon, served over HTTP at ``/metrics``.

The handlers count calls and stream updates in plain dictionaries on the
event loop, which costs well under a microsecond a call. The metric
families are built from those counts only when ``/metrics`` is scraped,
on the HTTP server's thread (``Collector``). ``editstore serve
--metrics-listen HOST:PORT`` turns the endpoint on.

Scrapes are served one at a time, at most one every ``SCRAPE_INTERVAL``
seconds, and a scraper that comes sooner waits its turn. Building and
sending the page takes the interpreter lock from the event loop: eight
scrapers without pause cut the calls the daemon served by more than half.
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector as CollectorBase

# Connections served at once, and seconds a connection may stay idle.
MAX_CONNECTIONS = 16
CONNECTION_TIMEOUT_SECONDS = 10.0
# The shortest time between the starts of two scrapes. Prometheus scrapes
# each target once a minute by default (its global scrape_interval).
SCRAPE_INTERVAL = 0.1
# Upper bounds of the call duration buckets, in seconds.
DURATION_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class CallStats:
    """Counts of the calls and stream updates the daemon handled."""

    def __init__(self) -> None:
        self.calls: collections.Counter[tuple[str, str]] = collections.Counter()
        """Finished calls by method and status code name."""
        self.stream_updates: collections.Counter[str] = collections.Counter()
        """Acknowledged stream updates by status code name."""
        self._buckets: dict[str, list[int]] = {}
        self._sums: collections.defaultdict[str, float] = collections.defaultdict(float)

    def record(self, method: str, code: str, seconds: float | None) -> None:
        """Count a finished call; ``seconds`` is None for a stream."""
        self.calls[(method, code)] += 1
        if seconds is None:
            return
        buckets = self._buckets.get(method)
        if buckets is None:
            buckets = self._buckets[method] = [0] * (len(DURATION_BUCKETS) + 1)
        buckets[bisect.bisect_left(DURATION_BUCKETS, seconds)] += 1
        self._sums[method] += seconds

    def durations(self) -> list[tuple[str, list[int], float]]:
        """Return each unary method's bucket counts and sum of seconds."""
        # dict() and list() copy in one step under the interpreter lock, so
        # the event loop's increments during a scrape do not break the copy.
        buckets = dict(self._buckets)
        sums = dict(self._sums)
        return [
            (method, list(counts), sums.get(method, 0.0))
            for method, counts in buckets.items()
        ]


class Collector(CollectorBase):
    """Build the metric families from the daemon's counters at each scrape.

    Args:
        stats: The call counts of the handlers.
        gauges: Name, help text and function of each gauge; the functions run
            on the HTTP server's thread and must only read.
        counters: Name, help text and function of each counter read from
            elsewhere (the writer's totals).
    """

    def __init__(
        self,
        stats: CallStats,
        gauges: list[tuple[str, str, Callable[[], float]]],
        counters: list[tuple[str, str, Callable[[], float]]],
    ) -> None:
        self._stats = stats
        self._gauges = gauges
        self._counters = counters

    def collect(self) -> Iterator[Metric]:
        calls = CounterMetricFamily(
            "editstore_calls",
            "gRPC calls of the editstore services that ended, by status code",
            labels=["method", "code"],
        )
        for (method, code), count in sorted(dict(self._stats.calls).items()):
            calls.add_metric([method, code], count)
        yield calls

        durations = HistogramMetricFamily(
            "editstore_call_duration_seconds",
            "time from the request to the response of unary calls",
            labels=["method"],
        )
        for method, counts, total in sorted(self._stats.durations()):
            cumulative = []
            running = 0
            for bound, count in zip(
                [*map(str, DURATION_BUCKETS), "+Inf"], counts, strict=True
            ):
                running += count
                cumulative.append((bound, running))
            durations.add_metric([method], cumulative, total)
        yield durations

        updates = CounterMetricFamily(
            "editstore_stream_updates",
            "updates acknowledged on StreamStateUpdates, by status code",
            labels=["code"],
        )
        for code, count in sorted(dict(self._stats.stream_updates).items()):
            updates.add_metric([code], count)
        yield updates

        for name, help_text, read in self._counters:
            yield CounterMetricFamily(name, help_text, value=read())
        for name, help_text, read in self._gauges:
            yield GaugeMetricFamily(name, help_text, value=read())


def sqlite_bytes(path: str) -> Callable[[], float]:
    """Return a function that reads the size of a SQLite file and its log."""

    def read() -> float:
        total = 0
        for suffix in ("", "-wal"):
            try:
                total += os.stat(path + suffix).st_size
            except FileNotFoundError:
                pass
        return float(total)

    return read


class _Pacer:
    """Let one caller at a time through, and each at least ``interval``
    seconds after the one before it started."""

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._lock = threading.Lock()
        self._next = 0.0

    @contextlib.contextmanager
    def turn(self) -> Iterator[None]:
        with self._lock:
            delay = self._next - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self._next = time.monotonic() + self._interval
            yield


class _PacedRegistry(CollectorBase):
    """A registry whose collections take turns through a ``_Pacer``.

    The exposition code collects once per scrape and then builds the page,
    so a scraper waiting for its turn here holds no lock and costs nothing.
    With ``names``, only the samples of those names are collected.
    """

    def __init__(
        self, registry: Any, pacer: _Pacer, names: frozenset[str] | None = None
    ) -> None:
        self._registry = registry
        self._pacer = pacer
        self._names = names

    def collect(self) -> Iterator[Metric]:
        with self._pacer.turn():
            families = list(self._registry.collect())
        if self._names is None:
            return iter(families)
        kept = []
        for family in families:
            # Each collection builds new families, so they can be trimmed.
            family.samples = [s for s in family.samples if s.name in self._names]
            if family.samples:
                kept.append(family)
        return iter(kept)

    def restricted_registry(self, names: list[str]) -> _PacedRegistry:
        """Return the registry of a scrape that names its samples
        (``?name[]=``)."""
        return _PacedRegistry(self._registry, self._pacer, frozenset(names))


class _Handler(WSGIRequestHandler):
    """A request handler that logs nothing and closes idle connections."""

    timeout = CONNECTION_TIMEOUT_SECONDS

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        """Log nothing: a line per scrape would fill the daemon's log."""


class _Server(ThreadingWSGIServer):
    """A threaded HTTP server of at most ``MAX_CONNECTIONS`` connections.

    Each connection takes a thread and a file descriptor until it closes.
    One over the limit is closed at once, so connections left open cannot
    use up the daemon's file descriptors.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class _IPv6Server(_Server):
    address_family = socket.AF_INET6


class MetricsServer:
    """The HTTP server of ``/metrics``, on a thread of its own."""

    def __init__(
        self, collector: Collector, scrape_interval: float = SCRAPE_INTERVAL
    ) -> None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(collector)
        self._registry = _PacedRegistry(registry, _Pacer(scrape_interval))
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.port = 0

    def start(self, listen: str) -> None:
        """Serve on ``listen`` (HOST:PORT; port 0 picks a free one).

        Raises:
            OSError: the address can not be bound.
        """
        host, _, port = listen.rpartition(":")
        host = host.strip("[]")
        server_class = _IPv6Server if ":" in host else _Server
        self._server = make_server(
            host,
            int(port),
            make_wsgi_app(self._registry),
            server_class=server_class,
            handler_class=_Handler,
        )
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="editstore-metrics", daemon=True
        )
        self._thread.start()
        self.port = int(self._server.server_address[1])

    def stop(self) -> None:
        """Stop serving and wait for the thread."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
