"""mpdl's benchmark harness: ``python -m perf`` (see ``python -m perf --help``)."""
