"""Experiments over whole runs: launch one (runner), search hyper-parameters over many
(search, search_space). Runs are child processes of `distrec.train`, so nothing here imports
the training code; imports: stdlib, optuna, distrec.config.
"""
