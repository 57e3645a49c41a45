"""faceid: a face identification engine.

The repository root is the ``faceid`` package: ``engine/`` is ``faceid.engine``
(the domain: pipeline, index, store, service), ``server/`` the gRPC server,
``client/`` the Python client, ``benchmarks/`` the benchmark programs.
"""

__version__ = "0.1.0"
