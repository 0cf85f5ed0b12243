"""One load-generating client process, driven by ``bench.load``.

The process connects, prints ``ready`` and waits for a line ``go START END``
on stdin, where START and END are readings of ``time.monotonic()``. It then
sends state updates until END. Its last output line is a JSON object with
the number of updates acknowledged between START and END, the errors, and
the latency of each of those updates in microseconds. The same code drives
the echo server and the daemon.

Two client designs are available, so that the faster one can be chosen:
``aio`` (one asyncio loop with ``grpc.aio`` channels) and ``threads`` (one
thread per caller with synchronous stubs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time
from collections.abc import Iterator

import grpc

from bench.workload import patch_json
from editstore.v1 import state_pb2, state_pb2_grpc

# Without a local pool, channels of one process to one address share a
# single TCP connection; each channel here should have its own.
CHANNEL_OPTIONS = [("grpc.use_local_subchannel_pool", 1)]
CALL_TIMEOUT = 60.0


class Tally:
    """The counts the callers of one process made inside the window."""

    def __init__(self) -> None:
        self.start = 0.0
        self.end = 0.0
        self.count = 0
        self.errors = 0
        self.first_error = ""
        self.latencies_us: list[int] = []
        self.cpu_seconds = 0.0
        self.lock = threading.Lock()

    def record(self, sent: float, done: float) -> None:
        if self.start <= done <= self.end:
            self.count += 1
            self.latencies_us.append(int((done - sent) * 1e6))

    def error(self, message: str) -> None:
        self.errors += 1
        if not self.first_error:
            self.first_error = message

    def result(self) -> dict[str, object]:
        return {
            "count": self.count,
            "errors": self.errors,
            "first_error": self.first_error,
            "latencies_us": self.latencies_us,
            "cpu_seconds": self.cpu_seconds,
        }


def wait_for_go(tally: Tally) -> None:
    print("ready", flush=True)
    line = sys.stdin.readline().split()
    if not line or line[0] != "go":
        raise SystemExit(f"expected 'go START END' on stdin, got {line!r}")
    tally.start, tally.end = float(line[1]), float(line[2])
    tally.cpu_seconds = -time.process_time()


async def aio_unary_caller(
    stub: state_pb2_grpc.StateServiceStub, session_id: str, tally: Tally
) -> None:
    step = 0
    while time.monotonic() < tally.end:
        step += 1
        request = state_pb2.PatchStateRequest(
            session_id=session_id, merge_patch_json=patch_json(step)
        )
        sent = time.monotonic()
        try:
            await stub.PatchState(request, timeout=CALL_TIMEOUT)
        except grpc.RpcError as error:
            tally.error(f"{error.code()}: {error.details()}")
            continue
        tally.record(sent, time.monotonic())


async def aio_stream_caller(
    stub: state_pb2_grpc.StateServiceStub, session_id: str, window: int, tally: Tally
) -> None:
    call = stub.StreamStateUpdates(timeout=CALL_TIMEOUT + tally.end - time.monotonic())
    in_flight = asyncio.Semaphore(window)
    sent: dict[int, float] = {}

    async def write() -> None:
        sequence = 0
        while time.monotonic() < tally.end:
            await in_flight.acquire()
            sequence += 1
            sent[sequence] = time.monotonic()
            await call.write(
                state_pb2.StreamStateUpdatesRequest(
                    sequence=sequence,
                    session_id=session_id,
                    merge_patch_json=patch_json(sequence),
                    combine_acknowledgement=True,
                )
            )
        await call.done_writing()

    async def read() -> None:
        async for ack in call:
            done = time.monotonic()
            in_flight.release()
            if ack.code != 0:
                tally.error(f"code {ack.code}: {ack.message}")
                continue
            tally.record(sent.pop(ack.sequence), done)
            for sequence in ack.applied_sequences:
                in_flight.release()
                tally.record(sent.pop(sequence), done)

    try:
        await asyncio.gather(write(), read())
    except grpc.RpcError as error:
        tally.error(f"{error.code()}: {error.details()}")
    except asyncio.InvalidStateError:
        # The server ended the stream while updates were still being sent.
        tally.error(f"{call.code()}: {await call.details()}")


async def run_aio(args: argparse.Namespace, tally: Tally) -> None:
    channels = [
        grpc.aio.insecure_channel(args.address, options=CHANNEL_OPTIONS)
        for _ in range(args.channels)
    ]
    for channel in channels:
        await asyncio.wait_for(channel.channel_ready(), CALL_TIMEOUT)
    stubs = [state_pb2_grpc.StateServiceStub(channel) for channel in channels]
    await asyncio.get_running_loop().run_in_executor(None, wait_for_go, tally)
    callers = []
    for index in range(args.callers):
        stub = stubs[index % len(stubs)]
        session_id = args.sessions[index % len(args.sessions)]
        if args.mode == "unary":
            callers.append(aio_unary_caller(stub, session_id, tally))
        else:
            callers.append(aio_stream_caller(stub, session_id, args.window, tally))
    await asyncio.gather(*callers)
    for channel in channels:
        await channel.close()


def thread_unary_caller(
    stub: state_pb2_grpc.StateServiceStub, session_id: str, tally: Tally
) -> None:
    step = 0
    while time.monotonic() < tally.end:
        step += 1
        request = state_pb2.PatchStateRequest(
            session_id=session_id, merge_patch_json=patch_json(step)
        )
        sent = time.monotonic()
        try:
            stub.PatchState(request, timeout=CALL_TIMEOUT)
        except grpc.RpcError as error:
            with tally.lock:
                tally.error(f"{error.code()}: {error.details()}")
            continue
        done = time.monotonic()
        with tally.lock:
            tally.record(sent, done)


def thread_stream_caller(
    stub: state_pb2_grpc.StateServiceStub, session_id: str, window: int, tally: Tally
) -> None:
    in_flight = threading.Semaphore(window)
    sent: dict[int, float] = {}

    def requests() -> Iterator[state_pb2.StreamStateUpdatesRequest]:
        sequence = 0
        while time.monotonic() < tally.end:
            in_flight.acquire()
            sequence += 1
            sent[sequence] = time.monotonic()
            yield state_pb2.StreamStateUpdatesRequest(
                sequence=sequence,
                session_id=session_id,
                merge_patch_json=patch_json(sequence),
                combine_acknowledgement=True,
            )

    try:
        for ack in stub.StreamStateUpdates(
            requests(), timeout=CALL_TIMEOUT + tally.end - time.monotonic()
        ):
            done = time.monotonic()
            in_flight.release(1 + len(ack.applied_sequences))
            with tally.lock:
                if ack.code != 0:
                    tally.error(f"code {ack.code}: {ack.message}")
                else:
                    tally.record(sent.pop(ack.sequence), done)
                for sequence in ack.applied_sequences:
                    tally.record(sent.pop(sequence), done)
    except grpc.RpcError as error:
        with tally.lock:
            tally.error(f"{error.code()}: {error.details()}")


def run_threads(args: argparse.Namespace, tally: Tally) -> None:
    channels = [
        grpc.insecure_channel(args.address, options=CHANNEL_OPTIONS)
        for _ in range(args.channels)
    ]
    for channel in channels:
        grpc.channel_ready_future(channel).result(CALL_TIMEOUT)
    stubs = [state_pb2_grpc.StateServiceStub(channel) for channel in channels]
    wait_for_go(tally)
    threads = []
    for index in range(args.callers):
        stub = stubs[index % len(stubs)]
        session_id = args.sessions[index % len(args.sessions)]
        if args.mode == "unary":
            thread = threading.Thread(
                target=thread_unary_caller, args=(stub, session_id, tally)
            )
        else:
            thread = threading.Thread(
                target=thread_stream_caller,
                args=(stub, session_id, args.window, tally),
            )
        threads.append(thread)
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for channel in channels:
        channel.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", required=True, help="HOST:PORT of the server")
    parser.add_argument("--mode", choices=("unary", "stream"), required=True)
    parser.add_argument("--client", choices=("aio", "threads"), default="aio")
    parser.add_argument(
        "--sessions",
        required=True,
        type=lambda text: text.split(","),
        help="comma-separated session ids, given to the callers in turn",
    )
    parser.add_argument("--callers", type=int, required=True)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument(
        "--window",
        type=int,
        default=16,
        help="updates each stream keeps in flight (stream mode)",
    )
    args = parser.parse_args()
    tally = Tally()
    if args.client == "aio":
        asyncio.run(run_aio(args, tally))
    else:
        run_threads(args, tally)
    tally.cpu_seconds += time.process_time()
    print(json.dumps(tally.result()), flush=True)


if __name__ == "__main__":
    main()
