"""Front ends: other ways to write a thread on the same scheduler.

Generator threads (``yield from``) and ``async def`` threads (``await``) need
no front end: every waiting call in threadlib accepts both. ``green`` runs
plain functions as greenlets that block in ordinary-looking calls.
"""
