"""data_prep: a conversation video becomes a per-person training dataset (``common.dataset``).

Stages (see ``data_prep.pipeline``): people, landmarks and parsing per person, head pose and expression, the
torso's motion, audio features and who speaks (``speech``), QA pictures.
"""
