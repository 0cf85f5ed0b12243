"""Schema versions: apply the scripts in ``migrations/`` and check the result.

The schema version of a database is the number of the last migration applied.
``editstore migrate`` applies the pending ones; ``editstore serve`` calls
``ensure_current``, which stops a daemon from serving a database that is
behind the code (unless started with ``--migrate``) or ahead of it.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib

import peewee
from playhouse.migrations import Runner

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = pathlib.Path(__file__).resolve().parent / "migrations"
HISTORY_TABLE = "schema_migration"


class SchemaError(Exception):
    """The database's schema does not match the code; the message explains why."""


@dataclasses.dataclass(frozen=True)
class SchemaStatus:
    """The applied and the pending migrations of one database."""

    applied: tuple[str, ...]
    pending: tuple[str, ...]
    unknown: tuple[str, ...]
    """Migrations recorded in the database that this code does not have."""

    @property
    def version(self) -> int:
        """Return the number of the last applied migration, 0 for none."""
        numbers = [int(name.split("_", 1)[0]) for name in self.applied]
        return max(numbers, default=0)


def _runner(database: peewee.Database) -> Runner:
    return Runner(database, directory=str(MIGRATIONS_DIR), table_name=HISTORY_TABLE)


def code_version() -> int:
    """Return the number of the newest migration this code has."""
    names = [path.stem for path in MIGRATIONS_DIR.glob("[0-9]*.py")]
    return max((int(name.split("_", 1)[0]) for name in names), default=0)


def status(database: peewee.Database) -> SchemaStatus:
    """Return the applied, pending and unknown migrations of a database."""
    rows = _runner(database).status()
    return SchemaStatus(
        applied=tuple(row.name for row in rows if row.applied and row.path),
        pending=tuple(row.name for row in rows if not row.applied),
        unknown=tuple(row.name for row in rows if row.path is None),
    )


def upgrade(database: peewee.Database) -> list[str]:
    """Apply every pending migration, each in its own transaction.

    Raises:
        SchemaError: the database is ahead of the code.
    """
    current = status(database)
    if current.unknown:
        raise _ahead_error(current)
    applied = _runner(database).up()
    for name in applied:
        logger.info("applied migration %s", name)
    return list(applied)


def ensure_current(database: peewee.Database, migrate: bool) -> SchemaStatus:
    """Check that the schema matches the code, migrating first if allowed.

    Raises:
        SchemaError: the database is ahead of the code, or behind it and
            ``migrate`` is false. The message explains what to do.
    """
    current = status(database)
    if current.unknown:
        raise _ahead_error(current)
    if current.pending:
        if not migrate:
            raise SchemaError(
                f"database schema is at version {current.version} but this "
                f"editstore needs version {code_version()} "
                f"(pending: {', '.join(current.pending)}); run `editstore "
                "migrate` with the same --database, or start with --migrate"
            )
        upgrade(database)
        current = status(database)
    return current


def _ahead_error(current: SchemaStatus) -> SchemaError:
    return SchemaError(
        f"database schema has migrations this editstore does not know "
        f"({', '.join(current.unknown)}); it was written by a newer editstore. "
        "Upgrade editstore; do not run an older one on this database"
    )
