"""Process-level tools: ``multicore`` (N worker processes sharing a port,
restarted when they die), ``signals`` (wait for a Unix signal in a thread)
and ``subprocess`` (child processes: ``run``, ``spawn_process``). Import
the one you need; this package imports none itself."""
