"""A JWKS endpoint for the tests: a real HTTP server on a free loopback port, in a thread of
the test process, serving whatever the test sets and counting what it was asked."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


@dataclass
class SigningKey:
    """A provider's key pair: the private half signs test tokens, the public half is
    published."""

    kid: str
    algorithm: str
    private: PrivateKey

    @classmethod
    def new(cls, kid: str, algorithm: str) -> SigningKey:
        private: PrivateKey
        if algorithm.startswith("RS"):
            private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        elif algorithm == "ES256":
            private = ec.generate_private_key(ec.SECP256R1())
        else:
            private = ed25519.Ed25519PrivateKey.generate()
        return cls(kid, algorithm, private)

    def jwk(self) -> dict[str, Any]:
        public = self.private.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            data = RSAAlgorithm.to_jwk(public, as_dict=True)
        elif isinstance(public, ec.EllipticCurvePublicKey):
            data = ECAlgorithm.to_jwk(public, as_dict=True)
        else:
            data = OKPAlgorithm.to_jwk(public, as_dict=True)
        return {**data, "kid": self.kid, "use": "sig", "alg": self.algorithm}

    def token(self, claims: dict[str, Any], **headers: Any) -> str:
        return jwt.encode(
            claims, self.private, algorithm=self.algorithm, headers={"kid": self.kid, **headers}
        )


@dataclass
class JwksServer:
    status: int = 200
    body: bytes = b'{"keys": []}'
    content_type: str = "application/json"
    requests: int = 0
    paths: list[str] = field(default_factory=list)
    trickle: float = 0.0  # seconds between the body's bytes (0: all at once)
    _server: ThreadingHTTPServer | None = None

    def publish(self, *keys: SigningKey | dict[str, Any]) -> None:
        documents = [key.jwk() if isinstance(key, SigningKey) else key for key in keys]
        self.answer(200, json.dumps({"keys": documents}).encode())

    def answer(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.status, self.body, self.content_type = status, body, content_type

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/jwks.json"

    def start(self) -> JwksServer:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.requests += 1
                owner.paths.append(self.path)
                self.send_response(owner.status)
                self.send_header("Content-Type", owner.content_type)
                self.send_header("Content-Length", str(len(owner.body)))
                self.end_headers()
                if not owner.trickle:
                    self.wfile.write(owner.body)
                    return
                for byte in owner.body[:20]:  # enough to prove the point, then hang up
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(owner.trickle)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


@contextmanager
def jwks_server() -> Iterator[JwksServer]:
    server = JwksServer().start()
    try:
        yield server
    finally:
        server.stop()
