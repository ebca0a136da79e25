"""Where the runs folder's names lived before evaluation.sweep became a package: they are in evaluation.sweep.store.

Kept only while app.py and evaluation/sweep_forms.py (moving to the UI package) import from here;
delete it once they import from evaluation.sweep.
"""

from evaluation.sweep.store import (
    RunsStorageError,
    SweepFolder,
    SweepLockedError,
    SweepState,
    SweepStatus,
    list_sweeps,
)

__all__ = ["RunsStorageError", "SweepFolder", "SweepLockedError", "SweepState", "SweepStatus", "list_sweeps"]
