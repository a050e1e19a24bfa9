"""Training: the jitted step (manual, reference, or both in lockstep), the loop, twin mode's verdict,
gradient clipping, checkpoints (files and the run's directory), running statistics, data parallelism,
the built-in data and tasks.
"""
