"""The decisions, without I/O: what to fetch next, from where, when to retry, race, split,
cut or give up, what a file needs before it is done.

Rules: nothing here opens a socket, a file, a process or a thread, or sleeps; a decision is
made from records handed in (manifest entries, messages from the processes) and returned as
records (messages to send, policies' decisions as frozen dataclasses), so each is tested
directly, without servers (tests/unit). The I/O subpackages (procs, net, disk) call the core;
the core never imports them (tests/unit/test_layers.py).
"""
