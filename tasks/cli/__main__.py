"""`python -m tasks.cli`: the `mailroom` console script without the installed wrapper."""

from tasks.cli import main

raise SystemExit(main())
