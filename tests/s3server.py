"""A real S3 endpoint for tests: moto's standalone server on 127.0.0.1, a free port.

Jobs reach it the way users reach S3: s3fs finds the endpoint in ``AWS_ENDPOINT_URL`` and
credentials in ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (``S3Server.env``). Tests set
objects up and read them back with boto3, a client independent of the code under test.
"""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

__all__ = ["S3Server", "s3_server", "SECRET"]

SECRET = "test-secret-never-printed"  # the secret key the fixture hands out


@dataclass(frozen=True)
class S3Server:
    endpoint: str

    def env(self, key_id: str = "testing") -> dict[str, str]:
        """What a process needs to reach this endpoint, and nothing else: no config files,
        no instance metadata (which would wait on a network that is not there)."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": key_id,
                "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": os.devnull,
                "AWS_SHARED_CREDENTIALS_FILE": os.devnull}

    def client(self) -> Any:
        import boto3

        env = self.env()
        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=SECRET)

    def put(self, bucket: str, key: str, data: bytes) -> None:
        self.client().put_object(Bucket=bucket, Key=key, Body=data)

    def get(self, bucket: str, key: str) -> bytes:
        return self.client().get_object(Bucket=bucket, Key=key)["Body"].read()

    def sha256(self, bucket: str, key: str) -> str:
        return hashlib.sha256(self.get(bucket, key)).hexdigest()

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        listed = self.client().list_objects_v2(Bucket=bucket, Prefix=prefix)
        return sorted(o["Key"] for o in listed.get("Contents", ()))

    @contextmanager
    def iam_enforced(self) -> Iterator[None]:
        """Check every request's credentials against moto's IAM (which knows none of ours)
        for the duration of the block."""
        self._reset_auth(b"0")
        try:
            yield
        finally:
            self._reset_auth(b"inf")

    def _reset_auth(self, count: bytes) -> None:
        # not form-encoded (urllib's default): the server would parse the body away
        request = urllib.request.Request(f"{self.endpoint}/moto-api/reset-auth", data=count,
                                         method="POST",
                                         headers={"Content-Type": "text/plain"})
        with urllib.request.urlopen(request, timeout=10) as reply:
            reply.read()


@contextmanager
def s3_server(*buckets: str) -> Iterator[S3Server]:
    """A started server holding the empty ``buckets``; stopped on exit."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        s3 = S3Server(f"http://{host}:{port}")
        for bucket in buckets:
            s3.client().create_bucket(Bucket=bucket)
        yield s3
    finally:
        server.stop()
