"""speech: who speaks, from audio and faces.

speaking (silero voice activity, the face mesh's mouth opening, the active speaker of a recorded conversation),
roles (a user's who-speaks-when file), voice_encoder (Resemblyzer's GE2E speaker embedding, from its wheel's
weights), voices (the trained persons' enrolled voices and who speaks when in new audio).
"""
