"""The face pipeline: decoding (Pillow), detection and landmarks (dlib), alignment, and the
embedding network (dlib's ResNet in torch).  The only module tree that imports PIL, dlib and torch."""
