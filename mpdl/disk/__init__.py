"""The disk: the writer process (slots to file offsets, hashes, votes between copies), the
journal that makes a run resumable, where files go (layout), what an install already holds
(holdings) and an update built from it.

Rules: nothing is final before its hash is checked; a file is made final by one rename;
folders are created only inside DEST; OS-specific calls go through mpdl.osdeps. A module that
mixes pure rules with the I/O they serve stays here with its I/O (layout's paths, holdings'
judgements, votes' majority): the core is handed a Layout and never imports this subpackage.
"""
