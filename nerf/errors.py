"""The user-facing error of the avatar NeRF's training, audio pre-training and evaluation."""


class TrainError(Exception):
    """A user-facing failure (bad checkpoint, no usable frames, diverged loss); printed without a traceback."""
