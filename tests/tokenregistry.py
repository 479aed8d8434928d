"""A second docker-registry on the test bed's storage, behind the bearer-token flow most registries
use (Docker Hub, GHCR, Harbor): the registry answers 401 with a challenge naming a token server,
which this module runs (basic credentials in, a JWT signed with a test key out). Tests list the
tags the plain registry holds through it, with and without the right credentials."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import os
import shutil
import ssl
import subprocess
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from tests.conftest import free_port

SERVICE = "gitsync-test-registry"
ISSUER = "gitsync-test-tokens"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()




class TokenRegistry:
    def __init__(self, folder: Path, storage: Path, user: str, password: str) -> None:
        self.user, self.password = user, password
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ISSUER)])
        now = datetime.datetime.now(datetime.timezone.utc)
        # one self-signed certificate for 127.0.0.1: the TLS of the registry and of the token server, and the tokens' signature
        self.cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(self.key.public_key())
                     .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
                     .not_valid_after(now + datetime.timedelta(days=1))
                     .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .sign(self.key, hashes.SHA256()))
        bundle = self.ca_file = folder / "token-ca.pem"
        bundle.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        key_file = folder / "token-key.pem"
        key_file.write_bytes(self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        issued = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                auth = self.headers.get("Authorization", "")
                given = base64.b64decode(auth[6:]).decode() if auth.startswith("Basic ") else ""
                if given != f"{issued.user}:{issued.password}":
                    self.send_response(401)
                    self.end_headers()
                    return
                query = parse_qs(urlsplit(self.path).query)
                body = json.dumps({"token": issued.token(query.get("scope", [""])[0])}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.tokens = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.tokens.daemon_threads = True
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(str(bundle), str(key_file))
        self.tokens.socket = tls.wrap_socket(self.tokens.socket, server_side=True)
        threading.Thread(target=self.tokens.serve_forever, daemon=True).start()
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        conf = folder / "token-registry.yml"
        conf.write_text(
            "version: 0.1\nlog: {level: warn}\n"
            f"storage: {{filesystem: {{rootdirectory: {storage}}}, maintenance: {{readonly: {{enabled: true}}}}}}\n"
            f"http: {{addr: '{self.address}', tls: {{certificate: {bundle}, key: {key_file}}}}}\n"
            f"auth:\n  token:\n    realm: https://127.0.0.1:{self.tokens.server_address[1]}/token\n"
            f"    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {bundle}\n"
        )
        self.log = open(folder / "token-registry.log", "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen([shutil.which("docker-registry") or "docker-registry", "serve", str(conf)], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        trusted = ssl.create_default_context(cafile=str(bundle))
        while True:
            try:
                urllib.request.urlopen(f"https://{self.address}/v2/", timeout=1, context=trusted)
            except urllib.error.HTTPError as exc:
                if exc.code == 401:  # up, and asking for a token
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the token registry did not answer: {(folder / 'token-registry.log').read_text()[-500:]}")
            time.sleep(0.1)

    def token(self, scope: str) -> str:
        """A JWT as a token server issues it: the scope asked for, signed with the key the registry trusts."""
        access = []
        if scope.startswith("repository:"):
            _, name, actions = scope.split(":", 2)
            access.append({"type": "repository", "name": name, "actions": actions.split(",")})
        now = int(time.time())
        header = {"alg": "ES256", "typ": "JWT", "x5c": [base64.b64encode(self.cert.public_bytes(serialization.Encoding.DER)).decode()]}
        claims = {"iss": ISSUER, "sub": self.user, "aud": SERVICE, "exp": now + 300, "nbf": now - 10, "iat": now,
                  "jti": _b64(os.urandom(12)), "access": access}
        signing = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
        r, s = decode_dss_signature(self.key.sign(signing.encode(), ec.ECDSA(hashes.SHA256())))
        return f"{signing}.{_b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self.log.close()
        self.tokens.shutdown()
        self.tokens.server_close()
