"""Method handlers that turn every failure a client causes into its status code.

grpcio rejects a request it cannot parse (bad wire format, invalid UTF-8 in a
string field) with INTERNAL, and an exception that escapes a handler with
UNKNOWN. The handlers built here take the request as bytes and parse it
themselves, so such a request gets INVALID_ARGUMENT, and map each storage
error to its code (``status.CODES``). Only a bug in the daemon is INTERNAL:
it is logged with its traceback and the client is told no details.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf import message as protobuf_message
from google.protobuf import symbol_database
from google.protobuf.descriptor import ServiceDescriptor

from editstore.server import errors
from editstore.server.metrics import CallStats
from editstore.server.status import code_of

logger = logging.getLogger(__name__)

Behavior = Callable[..., Any]


class _Parser:
    """Parse raw request bytes, raising InvalidArgument on bad wire data."""

    def __init__(self, message_class: type[protobuf_message.Message]) -> None:
        self._class = message_class
        self._name = message_class.DESCRIPTOR.name

    def __call__(self, data: bytes) -> protobuf_message.Message:
        try:
            return self._class.FromString(data)
        except protobuf_message.DecodeError as error:
            raise errors.InvalidArgument(
                f"request is not a valid {self._name}: {error}; string fields must "
                "be valid UTF-8"
            ) from None


def _code_name(context: grpc.aio.ServicerContext, error: BaseException) -> str:
    """Return the name of the status code a failed call ends with."""
    if isinstance(error, grpc.aio.AbortError):
        # The handler aborted with a code of its own, which the context keeps.
        code = context.code()
        return code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
    if context.done():
        return "CANCELLED"
    if isinstance(error, errors.StoreError):
        return code_of(error).name
    return "INTERNAL"


async def _abort(
    context: grpc.aio.ServicerContext, method: str, error: BaseException
) -> None:
    if context.done():
        # The client cancelled or the deadline passed: no status can reach
        # it, and errors raised by writing to the ended call are expected.
        logger.debug("%s ended before its error was sent: %r", method, error)
        return
    if isinstance(error, errors.StoreError):
        code = code_of(error)
        logger.debug("%s failed with %s: %s", method, code.name, error)
        await context.abort(code, str(error))
    logger.exception("%s failed with an unexpected error", method)
    await context.abort(
        grpc.StatusCode.INTERNAL, "internal error; see the daemon's log"
    )


def _unary_unary(
    method: str, behavior: Behavior, parse: _Parser, stats: CallStats
) -> Behavior:
    async def handle(data: bytes, context: grpc.aio.ServicerContext) -> Any:
        started = time.perf_counter()
        code = "OK"
        try:
            return await behavior(parse(data), context)
        except (errors.StoreError, Exception) as error:
            code = _code_name(context, error)
            if isinstance(error, grpc.aio.AbortError):
                raise
            await _abort(context, method, error)
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        finally:
            stats.record(method, code, time.perf_counter() - started)

    return handle


class RequestReader:
    """The requests of a client stream, read one at a time and parsed."""

    def __init__(self, context: grpc.aio.ServicerContext, parse: _Parser) -> None:
        self._context = context
        self._parse = parse

    async def read(self) -> Any:
        """Return the next request, None at the end of the stream.

        Raises:
            InvalidArgument: the request is not valid wire data.
        """
        data = await self._context.read()
        if data is grpc.aio.EOF:
            return None
        return self._parse(data)


def _stream_writer(
    method: str,
    behavior: Behavior,
    parse: _Parser,
    client_streams: bool,
    stats: CallStats,
) -> Behavior:
    """Wrap a streaming method, which writes its responses with
    ``context.write``: an async generator between the method and gRPC would
    cost the event loop time on every message."""

    async def handle(request: Any, context: grpc.aio.ServicerContext) -> None:
        started = time.monotonic()
        code = "OK"
        try:
            argument = (
                RequestReader(context, parse) if client_streams else parse(request)
            )
            await behavior(argument, context)
        except (errors.StoreError, Exception) as error:
            code = _code_name(context, error)
            if isinstance(error, grpc.aio.AbortError):
                raise
            await _abort(context, method, error)
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        finally:
            stats.record(method, code, None)
            logger.debug("%s ended after %.1f s", method, time.monotonic() - started)

    return handle


def _serializer(message_class: Any) -> Callable[[Any], bytes]:
    """Serialize a response; bytes pass as they are, already serialized."""
    serialize = message_class.SerializeToString

    def to_bytes(response: Any) -> bytes:
        if isinstance(response, bytes):
            return response
        return serialize(response)  # type: ignore[no-any-return]

    return to_bytes


def generic_handler(
    servicer: object, service: ServiceDescriptor, stats: CallStats
) -> grpc.GenericRpcHandler:
    """Return handlers for every method of ``service`` implemented by
    ``servicer``, which count the calls in ``stats``."""
    database = symbol_database.Default()
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in service.methods:
        behavior = getattr(servicer, method.name)
        request_class = database.GetSymbol(method.input_type.full_name)
        response_class = database.GetSymbol(method.output_type.full_name)
        parse = _Parser(request_class)
        serialize = _serializer(response_class)
        full_name = f"{service.full_name}/{method.name}"
        if method.client_streaming and method.server_streaming:
            handler = grpc.stream_stream_rpc_method_handler(
                _stream_writer(full_name, behavior, parse, True, stats),
                response_serializer=serialize,
            )
        elif method.server_streaming:
            handler = grpc.unary_stream_rpc_method_handler(
                _stream_writer(full_name, behavior, parse, False, stats),
                response_serializer=serialize,
            )
        elif method.client_streaming:
            raise NotImplementedError(f"{full_name}: client streaming is not used")
        else:
            handler = grpc.unary_unary_rpc_method_handler(
                _unary_unary(full_name, behavior, parse, stats),
                response_serializer=serialize,
            )
        handlers[method.name] = handler
    return grpc.method_handlers_generic_handler(service.full_name, handlers)
