"""The errors a user can fix, apart from a bad value (ValueError) or a missing file (FileNotFoundError). Nothing is
imported here, so that an app's error handling (lightning_sde.cli.errors) costs nothing before the app runs."""


class CheckpointError(ValueError):
    """A file that is not a readable lightning-sde checkpoint."""


class NonFiniteError(RuntimeError):
    """Training produced a NaN or an infinity: it stops, rather than train on and save what it cannot use. `step`:
    the first global step whose loss or gradient was not finite, where known."""

    def __init__(self, message: str, step: int | None = None):
        super().__init__(message)
        self.step = step  # set by a check every process makes together (ScoreModule.check_finite)
        self.advice = None  # where to go on from, once the checkpoints were set aside (callbacks SetAside)
