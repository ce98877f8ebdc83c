"""`python -m edgeprune.cli`: the command line."""

from edgeprune.cli import main

main()
