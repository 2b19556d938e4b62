"""mech's benchmark suite: toolkit paths timed against plain-PyTorch anchors (``python -m bench``)."""
