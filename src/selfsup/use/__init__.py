"""Using a pretrained encoder: embeddings of a user's images, nearest-neighbour search and near-duplicates,
choosing which images to label, and a classifier kept on disk (train it, then predict new images).

Above the engine and the evaluation protocols (it reuses both); below ``cli/``.
"""
