"""Reports of run dirs: `mtlrec compare` (tables) and `mtlrec compare --plot` (figures).

Reads run dirs through mtlrec.runs.records only; never writes into them.

keys.py      which config keys and metrics tell runs apart
table.py, render.py, terminal.py, compare.py   `mtlrec compare` (the table, its formats, the
                                                terminal layouts, loading + selecting runs)
plots.py, plot_curves.py, plot_bars.py, plot_reliability.py   `mtlrec compare --plot`
"""
