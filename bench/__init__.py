"""threadlib benchmarks: peers side by side in the same run (see README.md)."""
