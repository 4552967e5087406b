"""``python -m vmis.hyperv kvp|vss|fcopy ...``: see :mod:`vmis.hyperv.cli`."""

import sys

from vmis.hyperv.cli import main

sys.exit(main(sys.argv[1:], prog="python -m vmis.hyperv"))
