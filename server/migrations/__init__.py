"""Versioned schema migrations, applied in order by ``editstore migrate``.

Each ``NNNN_name.py`` defines ``up(migrator, db)`` and declares frozen copies
of the models it needs, so a migration never changes when ``models.py`` does.
``playhouse.migrations`` runs each in a transaction and records its name once
in the table ``schema_migration``.
"""
