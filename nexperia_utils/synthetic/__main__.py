"""``python -m nexperia_utils.synthetic``: the generator's command line (:mod:`.cli`)."""
import sys

from nexperia_utils.synthetic.cli import main

sys.exit(main())
