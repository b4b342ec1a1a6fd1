"""``python -m specdec``: the ``specdec`` command line (see :mod:`specdec.cli`)."""

from specdec.cli import main

raise SystemExit(main())
