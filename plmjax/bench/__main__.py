"""`python -m plmjax.bench [flags]`: the same as `plmjax bench` (see plmjax/bench/command.py)."""
import sys

from plmjax.bench import command

sys.exit(command.main())
