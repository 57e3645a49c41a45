"""Clustering of embeddings into people (numpy only): :mod:`.linkage` merges over a sparse
neighbour graph, :mod:`.clusters` describes the result."""
