"""The cloud tier. Its guests run nodes with the cluster tier's pieces (tests/cluster), whose
modules import each other by bare name: their directory goes on the module path here, last, as
the cluster tier's conftest and bench/cluster_timings.py put it first."""

import sys
from pathlib import Path

_CLUSTER = str(Path(__file__).resolve().parents[1] / "cluster")
if _CLUSTER not in sys.path:
    sys.path.append(_CLUSTER)
