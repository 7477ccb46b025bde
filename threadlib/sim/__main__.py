"""``python -m threadlib.sim run MODULE:SCENARIO --seeds 1-1000 --jobs 2``:
the seed runner's command line (see ``threadlib.sim.runner``). It must
never run a scenario in the process that reports, only in its workers."""

import sys

from .runner import main

if __name__ == "__main__":
    sys.exit(main())
