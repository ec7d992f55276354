"""Evaluation: tasks, graders, the testbed task generators, sweeps and reports."""
