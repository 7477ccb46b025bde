"""Process-level tools: ``multicore`` (N worker processes sharing a port,
restarted when they die) and ``signals`` (wait for a Unix signal in a
thread). Import the one you need; this package imports none itself."""
