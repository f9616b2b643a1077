"""The one exception type that user-facing commands print without a traceback."""


class PrepareError(Exception):
    """Bad input or an impossible request; the message says what and what to do."""


class TrainError(Exception):
    """A user-facing failure of training, audio pre-training, evaluation or rendering (bad checkpoint, no usable
    frames, diverged loss); printed without a traceback."""
