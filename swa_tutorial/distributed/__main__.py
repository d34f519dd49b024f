"""``python -m swa_tutorial.distributed``: the self-checking demo (:func:`~swa_tutorial.distributed.launch.main`)."""

import sys

from swa_tutorial.distributed.launch import main

sys.exit(main())
