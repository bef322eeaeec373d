"""The one place that turns a URL into a filesystem: local paths, ``s3://`` and any other fsspec URL.

Credentials and region come from the usual AWS chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/
``AWS_SESSION_TOKEN``, ``AWS_PROFILE``, ``~/.aws/config``, instance roles); mm1data never takes
them as arguments and never prints them. The endpoint of an S3-compatible store (MinIO, R2, a
moto server) comes from ``--endpoint-url`` (the ``endpoint_url`` argument here), else
``AWS_ENDPOINT_URL_S3``, else ``AWS_ENDPOINT_URL``.

- :func:`fsspec_fs` gives an fsspec filesystem (s3fs for ``s3://``) and the path inside it;
- :func:`is_local` tells a local disk from a remote store;
- :func:`arrow_fs` gives a ``pyarrow.fs.FileSystem`` for Ray Data's ``filesystem=`` argument;
- :func:`register_webdataset_s3` lets ``webdataset.WebDataset("s3://...")`` read through fsspec;
- :func:`redact` masks credentials in any text (error messages, URLs) before it is shown.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any
from urllib.parse import urlparse

import fsspec

SECRET_ENV_VARS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ACCESS_KEY_ID")
DEFAULT_REGION = "us-east-1"


def is_s3(url: str) -> bool:
    """Whether ``url`` names an S3 (or S3-compatible) object or prefix."""
    return url.startswith(("s3://", "s3a://"))


def s3_endpoint(endpoint_url: str | None = None) -> str | None:
    """The S3 endpoint to use: the argument, else ``AWS_ENDPOINT_URL_S3``, else ``AWS_ENDPOINT_URL``."""
    return endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def fsspec_fs(url: str, endpoint_url: str | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """An fsspec filesystem for ``url`` and the path inside it (``bucket/key`` for ``s3://``).

    A fresh s3fs instance is made on every call (no fsspec instance cache), so the endpoint and
    credentials in the environment at call time are the ones used. ``region_name`` is not passed
    (with a custom endpoint it breaks bucket creation on moto/MinIO).
    """
    if is_s3(url):
        import s3fs

        endpoint = s3_endpoint(endpoint_url)
        client_kwargs = {"endpoint_url": endpoint} if endpoint else {}
        fs = s3fs.S3FileSystem(client_kwargs=client_kwargs, skip_instance_cache=True)
        return fs, url.split("://", 1)[1].rstrip("/")
    fs, path = fsspec.core.url_to_fs(url)
    return fs, path


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    """Whether ``fs`` is this machine's disk (fsspec's ``file`` protocol)."""
    protocol = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    return "file" in protocol


def arrow_fs(url: str, endpoint_url: str | None = None) -> tuple[Any, str]:
    """A ``pyarrow.fs.FileSystem`` for ``url`` and the path inside it, for Ray Data's ``filesystem=``.

    Local paths give ``(None, absolute path)`` (Ray Data's default is right for them); ``s3://``
    gives a ``pyarrow.fs.S3FileSystem`` (``scheme="http"`` for an ``http://`` endpoint, region from
    ``AWS_REGION``/``AWS_DEFAULT_REGION`` or us-east-1 for custom endpoints); other fsspec URLs are
    wrapped in ``PyFileSystem(FSSpecHandler(...))``.
    """
    import pyarrow.fs as pafs

    if is_s3(url):
        endpoint = s3_endpoint(endpoint_url)
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        kwargs: dict[str, Any] = {}
        if endpoint:
            parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
            kwargs.update(
                endpoint_override=parsed.netloc + parsed.path.rstrip("/"),
                scheme=parsed.scheme or "https",
                region=region or DEFAULT_REGION,
            )
        elif region:
            kwargs["region"] = region
        return pafs.S3FileSystem(**kwargs), url.split("://", 1)[1].rstrip("/")
    if "://" not in url or url.startswith("file://"):
        return None, os.path.abspath(url.removeprefix("file://"))
    fs, path = fsspec_fs(url, endpoint_url)
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def _gopen_s3(url: str, mode: str = "rb", bufsize: int = 8192, **kw: Any) -> Any:
    """webdataset gopen handler: open an ``s3://`` URL through :func:`fsspec_fs`."""
    fs, path = fsspec_fs(url)
    return fs.open(path, mode, block_size=max(bufsize, 8 * 2**20))


def register_webdataset_s3() -> None:
    """Make ``webdataset`` open ``s3://`` shards with fsspec/s3fs (webdataset 1.0 has no handler).

    Idempotent; the endpoint comes from the environment (``AWS_ENDPOINT_URL``) when the shard is opened.
    """
    import webdataset.gopen  # noqa: F401 - loads the module; the attribute is the function of that name

    gopen_module = sys.modules["webdataset.gopen"]
    gopen_module.gopen_schemes["s3"] = _gopen_s3


_URL_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@")
_SIGNED_QUERY = re.compile(
    r"(?i)(X-Amz-(?:Credential|Signature|Security-Token)|AWSAccessKeyId|Signature)=[^&\s'\"]+"
)
_ACCESS_KEY_ID = re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b")


def redact(text: object) -> str:
    """``text`` (a string, URL or exception) with credentials masked as ``***``.

    Masks the values of the AWS credential environment variables wherever they appear,
    ``user:password@`` in URLs, signatures and credentials in presigned query strings, and anything
    shaped like an AWS access key id.
    """
    s = f"{type(text).__name__}: {text}" if isinstance(text, BaseException) else str(text)
    for var in SECRET_ENV_VARS:
        value = os.environ.get(var)
        if value and len(value) >= 4:
            s = s.replace(value, "***")
    s = _URL_USERINFO.sub(r"\g<scheme>***@", s)
    s = _SIGNED_QUERY.sub(r"\1=***", s)
    return _ACCESS_KEY_ID.sub("***", s)
