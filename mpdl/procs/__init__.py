"""The processes: the supervisor that starts the workers and the writer and carries messages
between them and the core, the worker process, the shared-memory ring the bytes travel in,
the children's common setup, the guard against a script re-imported by spawn, and Control.

Rules: every wait has a deadline; a child that dies is noticed and replaced or the run stops
with one line; nothing is left behind (processes, /dev/shm). What to do is the core's to
decide; this subpackage only carries it out.
"""
