"""`python -m launcher` is the `launcher` console script."""

from launcher.cli import main

if __name__ == "__main__":
    main()
