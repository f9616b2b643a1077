"""data_prep: a conversation video becomes a per-person training dataset.

Stages (see ``data_prep.pipeline``): decode, people, landmarks, head pose,
expression, parsing and background plates, audio features, who speaks (``speech``), QA.
"""
