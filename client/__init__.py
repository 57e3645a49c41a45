"""faceid's clients: the ``faceid`` command line (and, with the gRPC API, the Python client)."""
