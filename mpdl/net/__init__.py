"""The network: urllib3 pools with proxies and TLS, a range fetched into ring slots (and small
objects in batches), speed caps, the single-URL path in the calling process.

Rules: a server is hostile until its bytes are checked: Content-Range, lengths and hashes are
checked here, and what went wrong is reported as a typed failure for the core's retry policy
to judge; no read without a timeout.
"""
