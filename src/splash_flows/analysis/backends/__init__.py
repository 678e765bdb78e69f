"""Where reductions run: ``local`` (a process pool on this machine) or ``sfapi`` (a Slurm job at NERSC)."""

from splash_flows.analysis.backends.base import AnalysisBackend, ProgressFn

__all__ = ["AnalysisBackend", "ProgressFn"]
