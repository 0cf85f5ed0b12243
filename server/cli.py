"""The ``editstore`` command: serve, migrate, health and replay.

    editstore serve                      # SQLite in ./editstore-data, 127.0.0.1:50051
    editstore serve --database postgresql://postgres@127.0.0.1/editstore --migrate
    editstore migrate --database sqlite:///var/lib/editstore/editstore.db
    editstore health --address 127.0.0.1:50051

This is the only module that configures logging.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import pathlib
import sys
from typing import Any

from editstore.server import config

logger = logging.getLogger(__name__)


def _demote_unsent_response(record: logging.LogRecord) -> bool:
    """Log grpcio's report of a response sent after its call ended at debug.

    grpcio logs an ExecuteBatchError with a traceback at ERROR when a
    handler's response can no longer be sent, because the client cancelled
    or its deadline passed meanwhile. The client already has its status, so
    nothing failed on the daemon's side.
    """
    if record.levelno == logging.ERROR and str(record.msg).startswith(
        "ExecuteBatchError raised in core"
    ):
        record.levelno = logging.DEBUG
        record.levelname = "DEBUG"
        return logging.getLogger("editstore").isEnabledFor(logging.DEBUG)
    return True


def _configure_logging(level: str) -> None:
    # Debug turns on editstore's own debug lines only. Other libraries stay
    # at info, because peewee's debug lines contain every statement with its
    # values, which would copy the users' prompts into the log.
    logging.basicConfig(
        level=max(logging.INFO, logging.getLevelName(level.upper())),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("editstore").setLevel(level.upper())
    logging.getLogger("grpc._cython.cygrpc").addFilter(_demote_unsent_response)
    # editstore logs each migration it applies, and peewee's own line for it
    # would repeat it.
    logging.getLogger("peewee.migrations").setLevel(logging.WARNING)


def _settings(args: argparse.Namespace) -> config.Settings | None:
    try:
        return config.from_arguments(args)
    except ValueError as error:
        print(f"editstore: {error}", file=sys.stderr)
        return None


def _serve(args: argparse.Namespace) -> int:
    import peewee

    from editstore.server import app, database, migrate

    settings = _settings(args)
    if settings is None:
        return 2
    _configure_logging(settings.log_level)
    try:
        asyncio.run(app.serve(settings))
    except migrate.SchemaError as error:
        logger.error("%s", error)
        return 3
    except (RuntimeError, ValueError, OSError, database.DatabaseInUse) as error:
        logger.error("editstore failed to start: %s", error)
        return 1
    except peewee.DatabaseError as error:
        logger.error(
            "editstore failed to start: the database %s can not be used: %s",
            database.describe(settings.database),
            error,
        )
        return 1
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from editstore.server import database, migrate

    settings = _settings(args)
    if settings is None:
        return 2
    _configure_logging(settings.log_level)
    try:
        db = database.open_database(settings.database)
        before = migrate.status(db)
        applied = migrate.upgrade(db)
        after = migrate.status(db)
    except migrate.SchemaError as error:
        logger.error("%s", error)
        return 3
    except ValueError as error:
        logger.error("%s", error)
        return 2
    if applied:
        print(
            f"migrated {database.describe(settings.database)} from schema version "
            f"{before.version} to {after.version}: {', '.join(applied)}"
        )
    else:
        print(f"schema version {after.version} is current; nothing to apply")
    return 0


def _read_pem(flag: str, path: str | None) -> bytes | None:
    """Return the bytes of a PEM file named by ``flag``, None when not given."""
    if not path:
        return None
    try:
        return pathlib.Path(path).read_bytes()
    except OSError as error:
        reason = error.strerror or error
        raise ValueError(f"cannot read {flag} {path}: {reason}") from error


def _health_channel(args: argparse.Namespace) -> Any:
    """Open a plaintext channel, or a TLS one when --tls-ca is given."""
    import grpc

    if not args.tls_ca:
        if args.tls_cert or args.tls_key:
            raise ValueError("--tls-cert and --tls-key need --tls-ca")
        return grpc.insecure_channel(args.address)
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ValueError("--tls-cert and --tls-key must be given together")
    credentials = grpc.ssl_channel_credentials(
        root_certificates=_read_pem("--tls-ca", args.tls_ca),
        private_key=_read_pem("--tls-key", args.tls_key),
        certificate_chain=_read_pem("--tls-cert", args.tls_cert),
    )
    options = []
    if args.tls_server_name:
        options.append(("grpc.ssl_target_name_override", args.tls_server_name))
    return grpc.secure_channel(args.address, credentials, options=options)


def _health(args: argparse.Namespace) -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        channel = _health_channel(args)
    except ValueError as error:
        print(f"editstore health: {error}", file=sys.stderr)
        return 2
    try:
        with channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service),
                timeout=args.timeout,
            )
    except grpc.RpcError as error:
        print(f"editstore at {args.address}: {error.code().name}", file=sys.stderr)
        if error.code() == grpc.StatusCode.UNAVAILABLE:
            # gRPC's details give the cause: no listener, or a TLS handshake that a
            # plaintext check cannot make.
            print(f"  {error.details()}", file=sys.stderr)
            if not args.tls_ca:
                print(
                    "  if the daemon uses TLS, pass --tls-ca (and --tls-cert "
                    "and --tls-key for mutual TLS)",
                    file=sys.stderr,
                )
        return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"editstore at {args.address}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


def _replay(args: argparse.Namespace) -> int:
    from editstore.client import replay

    _configure_logging(getattr(args, "log_level", None) or "warning")
    return int(replay.run(args))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="editstore",
        description="Storage daemon for AI image-editing agents.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve",
        help="run the daemon",
        description="Serve the gRPC API until SIGTERM or SIGINT.",
    )
    config.add_arguments(serve)
    serve.set_defaults(handler=_serve)

    migrate_parser = commands.add_parser(
        "migrate",
        help="apply pending schema migrations",
        description="Bring the database's schema up to this version of editstore.",
    )
    migrate_parser.add_argument(
        "--database",
        default=None,
        help="database URL (env EDITSTORE_DATABASE; default "
        f"{config.DEFAULT_DATABASE})",
    )
    migrate_parser.add_argument("--log-level", default=None, help="log level")
    migrate_parser.set_defaults(handler=_migrate)

    health = commands.add_parser(
        "health",
        help="check that a daemon is serving",
        description="Exit 0 when the daemon's health check returns SERVING.",
    )
    health.add_argument(
        "--address",
        default=config.DEFAULT_LISTEN,
        help=f"host:port of the daemon (default {config.DEFAULT_LISTEN})",
    )
    health.add_argument(
        "--service", default="", help="service name (default: the whole daemon)"
    )
    health.add_argument(
        "--timeout", type=float, default=5.0, help="seconds to wait (default 5)"
    )
    health.add_argument(
        "--tls-ca",
        metavar="FILE",
        help="PEM CA bundle that signed the daemon's certificate; connects with TLS",
    )
    health.add_argument(
        "--tls-cert",
        metavar="FILE",
        help="PEM client certificate, for a daemon started with --tls-client-ca",
    )
    health.add_argument(
        "--tls-key", metavar="FILE", help="PEM private key of --tls-cert"
    )
    health.add_argument(
        "--tls-server-name",
        metavar="NAME",
        help="name to check the daemon's certificate against, when it differs "
        "from the host of --address",
    )
    health.set_defaults(handler=_health)

    replay = commands.add_parser(
        "replay",
        help="drive a daemon with sessions made from real data and compare",
        description="Store sessions built from real data, read them back, and "
        "print what was sent, stored and equal.",
    )
    try:
        from editstore.client import replay as replay_module
    except ImportError:
        replay_module = None
    if replay_module is not None:
        replay_module.add_arguments(replay)
    replay.set_defaults(handler=_replay)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``editstore`` command and return its exit code."""
    args = build_parser().parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
