"""A helper module beside handler.py: proves the code directory is on sys.path."""

SCALE = 2.0
