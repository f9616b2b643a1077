"""common: what every stage shares.

atomic_io (files written whole or not at all), video_io (decode and encode video and audio), dataset (the dataset
directory's contract and readers), geometry (the one Euler-angle convention), landmarks (face-mesh index sets),
errors (the user-facing exceptions), console (a quiet console), tb (TensorBoard writers).
"""
