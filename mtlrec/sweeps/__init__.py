"""Sweeps (`mtlrec train -m ...`): the Hydra callback that reports them and shares the cores.

callback.py  SweepReport (conf/train.yaml's hydra.callbacks): failed jobs do not stop the sweep,
             the closing report and table; job_thread_share (CPU threads per parallel job)
stop.py      SIGTERM to a parallel (joblib) sweep: stop every worker, report, exit 143
`mtlrec train resume=SWEEP_DIR` is mtlrec/commands/sweep_resume.py.
"""
