"""Run directories: written atomically by training, read back by mtlrec.report, evaluate, predict.

records.py   the run dir's file names, metrics.json's schema (RunSummary) and the reader (Run)
files.py     parsers of config.yaml / overrides.yaml / history.csv
run_dir.py   RunDir (the writer) and RunDirGuard (the Hydra callback that owns the dir)
atomic.py    atomic, umask-respecting file writes; clean-up of killed writers' temp files
lock.py      exclusive ownership of a dir for a process's life
resume.py    a resume attempt's claim of the dir and its checks
"""
