"""A bare gRPC echo of StateService, the baseline of the write benchmarks.

It is a ``grpc.aio`` server with the daemon's server options that implements
``StateService`` from the generated code and replies at once, storing
nothing:

- ``PatchState`` returns a StateDocument as large as the daemon's answer;
- ``StreamStateUpdates`` acknowledges each update as soon as it is read,
  with a reader task beside the writer as the daemon has;
- ``WatchState`` sends every patch made through ``PatchState`` to the
  session's watchers, from memory.

Run it as ``python -m bench.echo_server --listen 127.0.0.1:PORT``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import logging
from collections.abc import AsyncIterator

import grpc
from google.protobuf import timestamp_pb2
from grpc_health.v1 import health, health_pb2_grpc

from bench.servers import daemon_server_options
from bench.workload import base_document_json
from editstore.v1 import session_pb2, state_pb2, state_pb2_grpc

logger = logging.getLogger(__name__)

WATCH_QUEUE_SIZE = 1024


class EchoStateService(state_pb2_grpc.StateServiceServicer):
    """StateService that replies to every write at once and stores nothing."""

    def __init__(self, stream_style: str) -> None:
        # The aio server decides between a generator and a coroutine handler
        # from the function it is given, so the style picks the function.
        if stream_style == "generator":
            self.StreamStateUpdates = self._stream_generator  # type: ignore[method-assign]
        else:
            self.StreamStateUpdates = self._stream_tasks  # type: ignore[method-assign, assignment]
        self._versions: collections.Counter[str] = collections.Counter()
        self._watchers: dict[str, set[asyncio.Queue[state_pb2.WatchStateResponse]]]
        self._watchers = collections.defaultdict(set)
        # The daemon returns the whole document after the patch, so the echo
        # returns a document of the same size.
        self._document_json = base_document_json("0" * 36)

    def _document(self, session_id: str, version: int) -> session_pb2.StateDocument:
        update_time = timestamp_pb2.Timestamp()
        update_time.GetCurrentTime()
        return session_pb2.StateDocument(
            session_id=session_id,
            version=version,
            document_json=self._document_json,
            update_time=update_time,
        )

    async def PatchState(
        self,
        request: state_pb2.PatchStateRequest,
        context: grpc.aio.ServicerContext,
    ) -> session_pb2.StateDocument:
        self._versions[request.session_id] += 1
        document = self._document(
            request.session_id, self._versions[request.session_id]
        )
        watchers = self._watchers.get(request.session_id)
        if watchers:
            # One event object for all watchers, as a server would share it.
            event = state_pb2.WatchStateResponse(
                type=state_pb2.WATCH_EVENT_TYPE_CHANGE,
                state=document,
                merge_patch_json=request.merge_patch_json,
            )
            for queue in watchers:
                if not queue.full():
                    queue.put_nowait(event)
        return document

    async def _stream_generator(
        self,
        request_iterator: AsyncIterator[state_pb2.StreamStateUpdatesRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[state_pb2.StreamStateUpdatesResponse]:
        async for request in request_iterator:
            self._versions[request.session_id] += 1
            yield state_pb2.StreamStateUpdatesResponse(
                sequence=request.sequence,
                version=self._versions[request.session_id],
            )

    async def _stream_tasks(
        self,
        request_iterator: AsyncIterator[state_pb2.StreamStateUpdatesRequest],
        context: grpc.aio.ServicerContext,
    ) -> None:
        # Reads and writes run in two tasks, the way a server that keeps
        # reading while earlier updates commit is built. Like the daemon, a
        # response also acknowledges the updates read after it that were sent
        # with combine_acknowledgement, in its applied_sequences.
        acks: asyncio.Queue[tuple[int, int, bool] | None] = asyncio.Queue()

        async def read() -> None:
            while True:
                request = await context.read()
                if request is grpc.aio.EOF:
                    break
                self._versions[request.session_id] += 1
                acks.put_nowait(
                    (
                        request.sequence,
                        self._versions[request.session_id],
                        request.combine_acknowledgement,
                    )
                )
            acks.put_nowait(None)

        reader = asyncio.create_task(read())
        waiting = acks._queue  # type: ignore[attr-defined]
        try:
            while (ack := await acks.get()) is not None:
                sequences = []
                versions = []
                while waiting and waiting[0] is not None and waiting[0][2]:
                    sequence, version, _ = acks.get_nowait()
                    sequences.append(sequence)
                    versions.append(version)
                await context.write(
                    state_pb2.StreamStateUpdatesResponse(
                        sequence=ack[0],
                        version=ack[1],
                        applied_sequences=sequences,
                        applied_versions=versions,
                    )
                )
        finally:
            reader.cancel()

    async def WatchState(
        self,
        request: state_pb2.WatchStateRequest,
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[state_pb2.WatchStateResponse]:
        queue: asyncio.Queue[state_pb2.WatchStateResponse] = asyncio.Queue(
            WATCH_QUEUE_SIZE
        )
        self._watchers[request.session_id].add(queue)
        try:
            yield state_pb2.WatchStateResponse(
                type=state_pb2.WATCH_EVENT_TYPE_SNAPSHOT,
                state=self._document(request.session_id, 0),
            )
            while True:
                yield await queue.get()
        finally:
            self._watchers[request.session_id].discard(queue)


async def serve(listen: str, stream_style: str) -> None:
    """Serve the echo on listen until the process is stopped."""
    server = grpc.aio.server(options=daemon_server_options())
    state_pb2_grpc.add_StateServiceServicer_to_server(
        EchoStateService(stream_style), server
    )
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    server.add_insecure_port(listen)
    await server.start()
    logger.info("echo server listening on %s", listen)
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="HOST:PORT to listen on")
    parser.add_argument(
        "--stream-style",
        choices=("generator", "tasks"),
        default="tasks",
        help="how StreamStateUpdates is written: one async generator that "
        "reads and replies, or a reader task beside the writer (the default, "
        "which acknowledged about 30%% more updates a second in the bench)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    asyncio.run(serve(args.listen, args.stream_style))


if __name__ == "__main__":
    main()
