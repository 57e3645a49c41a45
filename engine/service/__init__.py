"""The use cases: :class:`Engine` (async, the one owner of every request below the transport)
over :class:`FaceService` (galleries, enrolment, identify, verify on embeddings)."""

from faceid.engine.service.engine import Engine
from faceid.engine.service.galleries import OpeningStoppedError
from faceid.engine.service.guard import CommitGuard
from faceid.engine.service.service import FaceService, Proceed

__all__ = ["CommitGuard", "Engine", "FaceService", "OpeningStoppedError", "Proceed"]
