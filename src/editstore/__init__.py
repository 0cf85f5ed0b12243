"""editstore: the storage daemon of AI image-editing agents.

``editstore.server`` is the daemon, ``editstore.client`` the Python client
library, and ``editstore.v1`` the code generated from ``protos/``.
"""

__version__ = "0.1.0"
