"""``python -m nexperia_utils.data.synthetic``: the generator's command line (:mod:`.cli`)."""
import sys

from nexperia_utils.data.synthetic.cli import main

sys.exit(main())
