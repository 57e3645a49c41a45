"""faceid's gRPC server: a thin ``grpc.aio`` layer over :class:`faceid.engine.service.FaceService`."""
