"""The errors a user can fix, apart from a bad value (ValueError) or a missing file (FileNotFoundError), and the
check of a count that every layer uses. Nothing heavy is imported here, so that an app's error handling
(lightning_sde.cli.errors) costs nothing before the app runs."""


import contextlib
import errno
import re

STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS}  # the storage, not the program


class WriteError(OSError):
    """A file could not be written for want of storage (a full disk, a quota, a read-only file system)."""


@contextlib.contextmanager
def writing(path):
    """Raise a failed write of `path` for want of storage as a WriteError naming it: an OSError of STORAGE_ERRNOS,
    or torch.save's RuntimeError from its zip writer (which reports a full disk as "unexpected pos ...")."""
    try:
        yield
    except (OSError, RuntimeError) as err:
        if isinstance(err.__context__, KeyboardInterrupt):  # Ctrl-C cut the write short: not a want of storage
            raise err.__context__ from None
        if isinstance(err, OSError) and err.errno in STORAGE_ERRNOS:
            detail = err.strerror or str(err)
        elif isinstance(err, RuntimeError) and ("inline_container" in str(err) or "PytorchStreamWriter" in str(err)):
            said = re.search(r"strerror: ([^\n]+)", str(err))  # its reason where it gives one (read-only, permission)
            detail = f"torch.save could not write it ({said.group(1).strip() if said else 'is the disk full?'})"
        else:
            raise
        raise WriteError(f"could not write {path}: {detail}") from err


def require_autograd(what: str) -> None:
    """RuntimeError, before any work, where `what` needs a backward pass and torch.inference_mode is on (which
    torch.enable_grad cannot lift)."""
    import torch

    if torch.is_inference_mode_enabled():
        raise RuntimeError(f"{what} takes gradients, which torch.inference_mode() forbids: call it under "
                           "torch.no_grad() instead, or outside both")


def first_line(err) -> str:
    """An error's message as one line (its first), for an app's one-line report of what a library raised."""
    text = str(err).strip()
    return text.splitlines()[0] if text else ""


def check_int(owner: str, key: str, value, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{owner}: {key} must be an integer >= {minimum}; got {value!r}")
    return value


class DashboardError(RuntimeError):
    """W&B could not log a run's view (no connection, its folder unusable); the results files are the record."""


class CheckpointError(ValueError):
    """A file that is not a readable lightning-sde checkpoint."""


def nonfinite_keys(tensors: dict) -> list[str]:
    """The names of a state dict's floating-point tensors that hold NaN or infinite values."""
    import torch

    return [k for k, v in tensors.items()
            if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()]


class NoConvergence(RuntimeError):
    """An adaptive solver that cannot meet its tolerance (too tight for the dtype, too few max_steps): a setting to
    change, said in one line by the apps."""


class NonFiniteError(RuntimeError):
    """Training produced a NaN or an infinity: it stops, rather than train on and save what it cannot use. `step`:
    the first global step whose loss or gradient was not finite, where known."""

    def __init__(self, message: str, step: int | None = None):
        super().__init__(message)
        self.step = step  # set by a check every process makes together (ScoreModule.check_finite)
        self.advice = None  # where to go on from, once the checkpoints were set aside (callbacks SetAside)
