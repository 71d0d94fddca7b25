"""Shared test helpers, one place for every test package (imported as `helpers.<module>`).

    helpers.datagen    small generated raw logs (BYO CSV events) and in-process prepare/train
    helpers.multidata  a raw CSV with bags, sequences, hashed fields and string labels
    helpers.runs       fake run dirs for compare/plots, the CLI as a subprocess for sweeps
    helpers.cli        `python -m mtlrec ...` in a fresh process, its env and output lines

Fixtures (tiny datasets, composed configs, `train_tiny`) live in tests/conftest.py.
"""
