"""mpdl: a multiprocess shared-memory downloader.

manifest -> plan -> tasks -> workers -> ring slots -> writer -> verified files
"""
