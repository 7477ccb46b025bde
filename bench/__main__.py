"""`python -m bench`: run every benchmark (see run_all.py)."""
from bench.run_all import main

main()
