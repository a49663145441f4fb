"""`invoke destroy --target local`: stop the local cluster of this config and remove all of it.

The keeper is asked to tear down (SIGTERM): every process in the run's namespaces is killed and
the namespaces deleted, with their bridges, veths and taps. Whatever its keeper could not
remove (or a keeper that was already gone left) is removed here, then the run directory with
the disks, seeds, etcd's data and the logs. Runs of other configs whose keeper died are swept
on the way. A second Ctrl-C cannot cut this short.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable

from ..cleanup import shielded_from_interrupts
from ..config import Settings
from ..errors import BakeryError
from . import netns, owner, state


def destroy(settings: Settings, log: Callable[[str], None] = print) -> str | None:
    """Remove the local cluster of this config; the run's name, or None if there was none."""
    with shielded_from_interrupts():
        for line in owner.sweep_stale():
            log(f"swept a namespace of a local cluster whose keeper is gone: {line}")
        record = state.load(settings.state_dir)
        run_dir = state.run_dir(settings.state_dir)
        if record is None:
            if run_dir.exists():
                shutil.rmtree(run_dir)
                log(f"removed what a failed launch left in {run_dir} (logs)")
            return None
        if owner.stop_keeper(record.run):
            log(f"{record.run}: the keeper tore down the VMs and namespaces")
        problems = owner.teardown(record.run)
        left = [name for name in record.namespaces if netns.exists(name)]
        if problems or left:
            raise BakeryError(
                f"could not remove {', '.join(left)} ({'; '.join(problems)}): the run record "
                f"{state.record_path(settings.state_dir)} is kept; retry, or `ip netns delete`"
            )
        shutil.rmtree(run_dir)
        log(f"{record.run}: removed {run_dir} (disks, seeds, etcd data, logs)")
        return record.run
