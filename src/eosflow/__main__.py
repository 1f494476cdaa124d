"""``python -m eosflow``: the same as the ``eosflow`` command (:func:`eosflow.cli.main`)."""

import sys

from eosflow.cli import main

if __name__ == "__main__":
    sys.exit(main())
