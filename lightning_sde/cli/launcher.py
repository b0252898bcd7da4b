"""Hydra's submitit SLURM launcher (configs/hydra/launcher/slurm.yaml), with a failed run failing its SLURM job.

Hydra's own launcher keeps a run's failure in the job's return value: the SLURM job ends COMPLETED with exit code 0,
which `sacct`, `--dependency=afterok` and the cluster's accounting take for a success. Here the job raises, so SLURM
records it FAILED (exit 1), and the sweep ends with the run's one-line error.

Hydra takes launchers from its `hydra_plugins` namespace only; `register()` (apps.run, before Hydra starts) enters this
one there under PLUGIN, the name slurm.yaml's `_target_` gives, without a package outside lightning_sde.
"""

from __future__ import annotations

import re

from hydra.core.utils import JobReturn, JobStatus
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as SubmititSlurmLauncher

PLUGIN = "hydra_plugins.lightning_sde.SlurmLauncher"


class RunFailed(Exception):
    """A run of the sweep failed on its node (its one-line error, or the exception of a bug)."""


class SlurmLauncher(SubmititSlurmLauncher):
    def __init__(self, **params) -> None:
        super().__init__(**params)
        from lightning_sde.configuration import site_sbatch

        # the site's sbatch options (mem, mail), under those of the config and command line
        self.params["additional_parameters"] = {**site_sbatch(), **(self.params.get("additional_parameters") or {})}

    def __call__(self, *args, **kwargs) -> JobReturn:  # on the node
        ret = super().__call__(*args, **kwargs)
        if ret.status == JobStatus.FAILED:
            from lightning_sde.cli.errors import JobFailed

            error = ret._return_value
            raise RunFailed(str(error) if isinstance(error, JobFailed)
                            else f"{type(error).__name__}: {error}") from error  # a bug's traceback in the job's log
        return ret

    def launch(self, job_overrides, initial_job_idx):  # where the sweep was started: it waits for its jobs in order
        from submitit.core.utils import FailedJobError

        from lightning_sde.cli.errors import JobFailed

        try:
            return super().launch(job_overrides, initial_job_idx)
        except FailedJobError as err:  # submitit's text holds the node's traceback; its last line is the error
            found = re.search(r"RunFailed: (.*)", str(err))
            log = re.findall(r"^\s+- (\S+\.out)$", str(err), re.MULTILINE)
            where = f" (its log: {log[-1]})" if log else ""
            raise JobFailed((found.group(1) if found else str(err).splitlines()[0]) + where) from None
        except RuntimeError as err:  # submitit's executor finds no SLURM here (no srun / sbatch on the PATH)
            if 'Could not detect "srun"' not in str(err):
                raise
            raise JobFailed(f"hydra/launcher=slurm: {err} (submit from a SLURM login node; "
                            "hydra/launcher=submitit_local runs the jobs here)") from None


def register() -> None:
    from hydra.core.plugins import Plugins

    Plugins.instance().class_name_to_class[PLUGIN] = SlurmLauncher
