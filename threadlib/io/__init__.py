"""IO libraries: every way a thread talks to the outside world.

=============  ================================================================
``sockio``     kernel sockets (TCP, UDP, Unix) and ``KernelNetwork``
``tcpsockio``  threadlib's own TCP/IP stack on a TUN device: ``UserNetwork``
``fileio``     files: Linux AIO with O_DIRECT, or the blocking pool
``aioworker``  the Linux AIO worker and its system calls
``splice``     zero-copy socket-to-socket forwarding with splice(2)
``tls``        TLS over any stream (kernel sockets, tcpsockio, ...)
=============  ================================================================

Import the one you need (``from threadlib.io import sockio``); this package
imports none of them itself.
"""
