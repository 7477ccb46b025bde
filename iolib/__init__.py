"""iolib: operating-system mechanisms and the pure TCP/IP stack.

Nothing in this package schedules, blocks, or imports threadlib. Every call
either completes at once or reports that it would block; the runtime above
decides what to wait for.
"""
