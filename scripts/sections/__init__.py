"""One module per section of scripts/reproduce.py; each `section(run, quick)` returns its markdown."""
