"""Fleets: signed artifact sets published to an object store or HTTP server, pulled by agents.

``origin`` is where bytes come from and go to (``file://``, ``http(s)://``,
``s3://``); the manifest, the local mirror and the pull loop build on it.
Standard library only (and ``polc.runtime``); ``boto3`` is imported lazily by
``s3`` when an ``s3://`` URL is opened. ``import polc.runtime`` does not
import this package.
"""
