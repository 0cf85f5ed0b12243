"""The editstore daemon: gRPC services over Peewee models.

Start it with ``editstore serve``; see ``editstore.server.cli``.
"""
