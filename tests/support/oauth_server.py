"""A local OAuth 2.0 token endpoint for the XOAUTH2 tests: real HTTPS (a trustme certificate,
trusted through MAILROOM_TLS_CA_FILE) on a loopback address, speaking what msal and google-auth
speak, and the registry of tokens it issued, which the test relay (`smtp_sink`'s `xoauth2`
check, `TokenEndpoint.check`) accepts or refuses.

Microsoft (client credentials): `GET /{tenant}/v2.0/.well-known/openid-configuration` (msal's
tenant discovery when instance discovery is off), then `POST /{tenant}/oauth2/v2.0/token` with
grant_type=client_credentials, client_id, client_secret and scope; a wrong secret gets 401
`invalid_client` with an AADSTS7000215 description, as Entra ID answers. A certificate
credential (`certificate_file`) sends a signed client assertion instead, checked against the
registered certificate. The token is JWT-shaped
(its payload names `roles: ["SMTP.SendAsApp"]`), its signature is no real one.

Google (a service account, RFC 7523): `POST /google/token` with grant_type
urn:ietf:params:oauth:grant-type:jwt-bearer and an RS256 assertion, verified against the public
key of the account's key file (`service_account_file` makes both) for iss, sub, scope, aud
(Google's token endpoint, as google-auth names it) and exp.

`lifetime` sets the `expires_in` of the tokens issued next; `revoke(client)` refuses the client's
credentials and every token issued to it so far, `restore(client)` accepts them again. Every
request is recorded (`requests`), its secrets included: tests search logs for them.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support.lifecycle import StartStop
from tests.support.oauth_jwt import (
    assertion_ok,
    b64,
    key_pem,
    new_key,
    self_signed,
    verified_claims,
)
from tests.support.tls_material import TlsMaterial

TENANT = "contoso.test"
MICROSOFT_SCOPE = "https://outlook.office365.com/.default"
GOOGLE_SCOPE = "https://mail.google.com/"
GOOGLE_AUDIENCE = "https://oauth2.googleapis.com/token"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
REFUSED = "535 5.7.3 Authentication unsuccessful"
_INVALID_SECRET = {
    "error": "invalid_client",
    "error_description": "AADSTS7000215: Invalid client secret provided. Ensure the secret"
    " being sent in the request is the client secret value.",
    "error_codes": [7000215],
}
_MAX_BODY = 65536


@dataclass(frozen=True)
class Issued:
    """A token the endpoint issued: to which client, for which mailbox (Google), until when."""

    token: str
    client: str
    subject: str | None
    expires_at: float


@dataclass(frozen=True)
class TokenRequest:
    """One request the endpoint answered."""

    method: str
    path: str
    form: dict[str, str]
    status: int


@dataclass
class _State:
    clients: dict[str, str] = field(default_factory=dict)  # Microsoft: client id -> secret
    certificates: dict[str, x509.Certificate] = field(default_factory=dict)  # client id -> cert
    accounts: dict[str, rsa.RSAPublicKey] = field(default_factory=dict)  # Google: email -> key
    issued: dict[str, Issued] = field(default_factory=dict)
    revoked: set[str] = field(default_factory=set)
    requests: list[TokenRequest] = field(default_factory=list)
    lifetime: int = 3600
    relay_refuses: bool = False  # the relay refuses every token (no mailbox permission, ...)


class TokenEndpoint(StartStop):
    """The endpoint, in a thread, on `host` and a free port."""

    def __init__(self, tls: TlsMaterial, host: str = "127.0.0.4") -> None:
        self.host = host
        self._context = tls.server_cert(host).server_context()
        self._lock = threading.Lock()
        self._state = _State()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def base(self) -> str:
        assert self._server is not None
        return f"https://{self.host}:{self._server.server_address[1]}"

    @property
    def authority(self) -> str:
        """OAUTH_AUTHORITY for this endpoint ({tenant} left for Mailroom to fill in)."""
        return self.base + "/{tenant}"

    @property
    def token_uri(self) -> str:
        return self.base + "/google/token"

    @property
    def requests(self) -> list[TokenRequest]:
        with self._lock:
            return list(self._state.requests)

    def token_requests(self) -> int:
        """How many token requests (POSTs) were made, answered or refused."""
        return sum(1 for r in self.requests if r.method == "POST")

    def issued(self) -> list[Issued]:
        with self._lock:
            return list(self._state.issued.values())

    def set_lifetime(self, seconds: int) -> None:
        with self._lock:
            self._state.lifetime = seconds

    def add_client(self, client_id: str, secret: str) -> None:
        with self._lock:
            self._state.clients[client_id] = secret

    def certificate_file(self, directory: Path, client_id: str) -> Path:
        """A certificate credential for `client_id` (a fresh RSA key and a self-signed
        certificate, as one PEM file), registered as the application's."""
        key = new_key()
        certificate = self_signed(key)
        with self._lock:
            self._state.certificates[client_id] = certificate
        path = directory / f"{client_id}.pem"
        path.write_bytes(key_pem(key) + certificate.public_bytes(serialization.Encoding.PEM))
        return path

    def service_account_file(self, directory: Path, email: str) -> Path:
        """A service account's JSON key file (a fresh RSA key), its token_uri this endpoint."""
        key = new_key()
        with self._lock:
            self._state.accounts[email] = key.public_key()
        pem = key_pem(key).decode()
        info = {
            "type": "service_account",
            "project_id": "mailroom-test",
            "private_key_id": secrets.token_hex(20),
            "private_key": pem,
            "client_email": email,
            "client_id": "1234567890",
            "token_uri": self.token_uri,
        }
        path = directory / f"{email.partition('@')[0]}.json"
        path.write_text(json.dumps(info))
        return path

    def revoke(self, client: str) -> None:
        """Refuse `client`'s credentials, and every token issued to it so far."""
        with self._lock:
            self._state.revoked.add(client)
            for token in [t for t, i in self._state.issued.items() if i.client == client]:
                del self._state.issued[token]

    def restore(self, client: str) -> None:
        with self._lock:
            self._state.revoked.discard(client)

    def forget_tokens(self) -> None:
        """Every token issued so far stops working (the relay no longer accepts them)."""
        with self._lock:
            self._state.issued.clear()

    def refuse_at_relay(self, refuse: bool = True) -> None:
        """Make the relay refuse every token, issued or not (a permission missing there)."""
        with self._lock:
            self._state.relay_refuses = refuse

    def check(self, user: str, token: str) -> str | None:
        """The relay's verdict on AUTH XOAUTH2: None to accept, else its 535."""
        with self._lock:
            if self._state.relay_refuses:
                return REFUSED
            issued = self._state.issued.get(token)
        if issued is None or issued.expires_at <= time.time():
            return REFUSED
        if issued.subject is not None and issued.subject != user:
            return REFUSED
        return None

    def start(self) -> TokenEndpoint:
        server = ThreadingHTTPServer((self.host, 0), _handler(self))
        server.daemon_threads = True
        server.socket = self._context.wrap_socket(server.socket, server_side=True)
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    # What the handler asks, under the lock.

    def _answer(self, method: str, path: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        with self._lock:
            status, body = self._route(method, path, form)
            self._state.requests.append(TokenRequest(method, path, form, status))
            return status, body

    def _route(self, method: str, path: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        parts = path.split("?", maxsplit=1)[0].strip("/").split("/")
        if method == "GET" and parts[1:] == ["v2.0", ".well-known", "openid-configuration"]:
            tenant = parts[0]
            if tenant != TENANT:
                return 400, {"error": "invalid_tenant", "error_description": "AADSTS90002"}
            prefix = f"{self.base}/{tenant}/oauth2/v2.0"
            return 200, {
                "token_endpoint": f"{prefix}/token",
                "authorization_endpoint": f"{prefix}/authorize",
                "issuer": f"{self.base}/{tenant}/v2.0",
            }
        if method == "POST" and parts == [TENANT, "oauth2", "v2.0", "token"]:
            return self._microsoft(form)
        if method == "POST" and parts == ["google", "token"]:
            return self._google(form)
        return 404, {"error": "not_found"}

    def _microsoft(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        state = self._state
        client = form.get("client_id", "")
        if form.get("grant_type") != "client_credentials":
            return 400, {"error": "unsupported_grant_type"}
        if "client_assertion" in form:
            endpoint = f"{self.base}/{TENANT}/oauth2/v2.0/token"
            if not assertion_ok(form, client, state.certificates.get(client), endpoint):
                return 401, {
                    "error": "invalid_client",
                    "error_description": "AADSTS700027: Client assertion failed signature"
                    " validation.",
                }
        elif state.clients.get(client) != form.get("client_secret"):
            return 401, _INVALID_SECRET
        if client in state.revoked:
            return 401, _INVALID_SECRET
        if form.get("scope") != MICROSOFT_SCOPE:
            return 400, {"error": "invalid_scope", "error_description": "AADSTS70011: scope"}
        claims = {"aud": "https://outlook.office365.com", "tid": TENANT, "appid": client}
        return 200, self._issue(client, None, {**claims, "roles": ["SMTP.SendAsApp"]})

    def _google(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        if form.get("grant_type") != JWT_BEARER:
            return 400, {"error": "unsupported_grant_type"}
        claims = verified_claims(form.get("assertion", ""), self._state.accounts)
        if claims is None or claims.get("iss") in self._state.revoked:
            return 400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}
        # google-auth names Google's token endpoint as the audience wherever it posts.
        audience = claims.get("aud") in (GOOGLE_AUDIENCE, self.token_uri)
        if not audience or float(claims.get("exp", 0)) < time.time():
            return 400, {"error": "invalid_grant", "error_description": "Invalid JWT."}
        if claims.get("scope") != GOOGLE_SCOPE:
            return 400, {
                "error": "unauthorized_client",
                "error_description": "Client is unauthorized to retrieve access tokens using"
                " this method, or client not authorized for any of the scopes requested.",
            }
        subject = claims.get("sub")
        if not isinstance(subject, str) or "@" not in subject:
            return 400, {"error": "invalid_grant", "error_description": "Invalid email or ID"}
        answer = self._issue(str(claims["iss"]), subject, None)
        return 200, answer

    def _issue(self, client: str, subject: str | None, claims: dict[str, Any] | None) -> Any:
        lifetime = self._state.lifetime
        if claims is None:
            token = "ya29." + secrets.token_urlsafe(32)
        else:
            payload = {**claims, "jti": secrets.token_hex(8), "exp": int(time.time()) + lifetime}
            token = ".".join(
                (b64(b'{"alg":"none","typ":"JWT"}'), b64(json.dumps(payload).encode()),
                 secrets.token_urlsafe(16))
            )  # fmt: skip
        self._state.issued[token] = Issued(token, client, subject, time.time() + lifetime)
        return {"token_type": "Bearer", "expires_in": lifetime, "access_token": token}


def _handler(endpoint: TokenEndpoint) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = 5

        def do_GET(self) -> None:
            self._reply(*endpoint._answer("GET", self.path, {}))

        def do_POST(self) -> None:
            length = min(int(self.headers.get("Content-Length") or 0), _MAX_BODY)
            raw = self.rfile.read(length).decode("utf-8", "replace")
            form = {key: values[0] for key, values in parse_qs(raw).items()}
            self._reply(*endpoint._answer("POST", self.path, form))

        def _reply(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # requests are recorded, not printed

    return Handler
