"""Scaling-law sweeps: plan one axis into runs, launch them (local, submitit or sbatch), fit and report."""
