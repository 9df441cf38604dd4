"""Evaluation: accuracy and loss, interpolation barriers, the 2-D plane."""
