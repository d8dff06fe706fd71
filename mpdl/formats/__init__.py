"""The formats mpdl reads: the mpdl/1 manifest, GOG Galaxy depots converted to it, checksum
specifications and request headers.

Rules: everything read is untrusted and validated once, here, with a one-line error naming the
field; what comes out is frozen records the rest trusts.
"""
