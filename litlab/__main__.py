"""``python -m litlab`` runs the ``litlab`` command."""

from litlab.cli import main

main()
