"""`python -m training.study`."""

from training.study.cli import main

raise SystemExit(main())
