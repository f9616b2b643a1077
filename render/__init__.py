"""render: trained avatars -> conversation videos.

drive (per-person driving signals: posegen, tracked replay, retargeted replay), layout (the
original video's layout over its background plate, the N-person conference grid), conversation (chunked,
resumable rendering to mp4).
"""
