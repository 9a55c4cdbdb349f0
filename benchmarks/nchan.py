"""nginx with the Nchan module, the benchmarks' speed ceiling for fan-out.

Nchan is a C, in-memory publish/subscribe hub inside nginx: it keeps nothing durable and
does nothing but push. The same load generator drives it with the same subscribers and
publish rate as the ledger, so the ledger's latency can be read as a multiple of it.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Self

from ledger.testing import free_port, wait_for_http

MODULE_PATHS = (
    Path("/usr/lib/nginx/modules/ngx_nchan_module.so"),
    Path("/usr/lib64/nginx/modules/ngx_nchan_module.so"),
)

# One worker, like the ledger's one process; channels are the session ids. A subscriber is
# an EventSource stream (of one channel, or of several: ``/msub/a,b``), a publisher POSTs
# the message body.
CONFIG = """
load_module {module};
worker_processes 1;
daemon off;
pid {directory}/nginx.pid;
error_log {directory}/error.log warn;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    client_body_temp_path {directory}/body;
    proxy_temp_path {directory}/proxy;
    fastcgi_temp_path {directory}/fastcgi;
    uwsgi_temp_path {directory}/uwsgi;
    scgi_temp_path {directory}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location ~ ^/sub/([\\w-]+)$ {{
            nchan_subscriber eventsource;
            nchan_channel_id $1;
        }}
        location ~ ^/msub/([\\w,-]+)$ {{
            nchan_subscriber eventsource;
            nchan_channel_id $1;
            nchan_channel_id_split_delimiter ",";
        }}
        location ~ ^/pub/([\\w-]+)$ {{
            nchan_publisher;
            nchan_channel_id $1;
            nchan_message_buffer_length 16;
        }}
    }}
}}
"""


def multiplexed(channels: list[str]) -> str:
    """One subscriber's path to several channels (Nchan takes up to 255)."""
    return "/msub/" + ",".join(channels)


def nginx_binary() -> str | None:
    found = shutil.which("nginx")
    if found:
        return found
    return "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None


def nchan_module() -> Path | None:
    return next((path for path in MODULE_PATHS if path.exists()), None)


def available() -> bool:
    """Debian's packages `nginx` and `libnginx-mod-nchan` provide both."""
    return nginx_binary() is not None and nchan_module() is not None


class Nchan:
    """nginx + Nchan in the foreground on a free loopback port, for one benchmark run."""

    def __init__(self) -> None:
        binary, module = nginx_binary(), nchan_module()
        if binary is None or module is None:
            raise RuntimeError("nginx with the Nchan module is not installed")
        self.binary, self.module = binary, module
        self.port = free_port()
        self._tmp = tempfile.TemporaryDirectory(prefix="ledger-nchan-")
        self.directory = Path(self._tmp.name)
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Self:
        config = self.directory / "nginx.conf"
        config.write_text(
            CONFIG.format(module=self.module, directory=self.directory, port=self.port)
        )
        self.process = subprocess.Popen(
            [self.binary, "-c", str(config), "-p", str(self.directory)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = 10.0) -> None:
        assert self.process is not None
        wait_for_http(
            self.process,
            f"http://127.0.0.1:{self.port}/pub/ready",
            name="nginx",
            log=lambda: (self.directory / "error.log").read_text(errors="replace"),
            timeout=timeout,
        )

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._tmp.cleanup()
