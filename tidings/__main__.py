"""`python -m tidings` runs the same command line as the `tidings` script."""

from __future__ import annotations

from tidings.cli import main

if __name__ == "__main__":
    main()
