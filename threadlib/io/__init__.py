"""IO libraries: every way a thread talks to the outside world.

==================  ====================================================
Import the one you need (``from threadlib.io import sockio``); this package
imports none of them itself.
"""
