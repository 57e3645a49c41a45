"""Generated protobuf and gRPC code for ``faceid.v1`` (``python -m faceid.proto.generate`` rebuilds it)."""
