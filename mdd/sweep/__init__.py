"""Sweeps: Optuna studies over the settings of a single run (``mdd-sweep``).

This package is the only place that imports Optuna: ``config`` reads the sweep
file, ``worker`` runs trials, ``summary`` writes a finished study's summary and plots,
``best`` reads a study's best trial back for later runs.
"""

from mdd.sweep.best import SweptBest, best_params
from mdd.sweep.worker import run_sweep

__all__ = ["SweptBest", "best_params", "run_sweep"]
