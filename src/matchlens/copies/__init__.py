"""Copies and near-duplicates: pairs from the index kNN graph, labelled exact / near / partial, and their groups."""
