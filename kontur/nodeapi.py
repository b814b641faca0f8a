"""How the control machine talks to a node's REST API (kontur's own routes
under /kontur/ and Orthanc's).

:class:`NodeClient` is a small stdlib HTTP(S) client with basic auth and,
for the region's nodes, mutual TLS with the regional CA and the operator's
client certificate.  :func:`client_for` builds the client of one inventory
node: the service account ``kontur`` (its password from the secrets store),
``https://{address}:{ports.https}/`` and the operator certificate.  Tests
point it at loopback Orthancs by monkeypatching ``client_for``.
"""
from __future__ import annotations

import base64
import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from typing import TYPE_CHECKING, Any

from .errors import InvalidInput
from .model import Region

if TYPE_CHECKING:
    from .target import Target

SERVICE_USER = "kontur"


def decode_body(payload: bytes) -> Any:
    """An Orthanc answer: JSON when it is JSON, else text; None when empty."""
    if not payload:
        return None
    try:
        return json.loads(payload)
    except ValueError:
        return payload.decode("utf-8", errors="replace")


class NodeError(Exception):
    """A node did not answer, or answered with an error."""

    def __init__(self, message: str, status: int | None = None, body: Any = None):
        super().__init__(message)
        self.status = status
        self.body = body

    @property
    def unreachable(self) -> bool:
        return self.status is None


class NodeClient:
    def __init__(self, base_url: str, username: str | None, password: str | None, ca_file: str | None = None,
                 cert_file: str | None = None, key_file: str | None = None, *, timeout: float = 15.0,
                 name: str | None = None):
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self.name = name or self.base_url
        self.timeout = timeout
        self._headers = {"Accept": "application/json"}
        if username is not None:
            token = base64.b64encode(f"{username}:{password or ''}".encode()).decode()
            self._headers["Authorization"] = f"Basic {token}"
        self._context = None
        if self.base_url.startswith("https://"):
            ctx = ssl.create_default_context(cafile=ca_file)
            if cert_file:
                ctx.load_cert_chain(cert_file, key_file)
            self._context = ctx

    def request(self, method: str, path: str, body: Any = None, *, raw: bool = False) -> Any:
        url = self.base_url + path.lstrip("/")
        data = None
        headers = dict(self._headers)
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=self._context) as resp:
                payload = resp.read()
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = raw.decode("utf-8", errors="replace")
            msg = parsed.get("error") if isinstance(parsed, dict) and parsed.get("error") else (
                parsed.get("Message") if isinstance(parsed, dict) else str(parsed)[:200])
            raise NodeError(f"{self.name}: {method} /{path.lstrip('/')}: HTTP {exc.code}: {msg}",
                            exc.code, parsed) from None
        except (urllib.error.URLError, OSError, ssl.SSLError) as exc:
            reason = getattr(exc, "reason", exc)
            raise NodeError(f"{self.name}: unreachable at {self.base_url}: {reason}") from None
        return payload if raw else decode_body(payload)

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def get_raw(self, path: str) -> bytes:
        """The answer's bytes (a DICOM file)."""
        return self.request("GET", path, raw=True)

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, body if body is not None else {})

    # --- kontur's replication routes ---------------------------------------

    def replication_status(self) -> dict:
        return self.get("kontur/replication")

    def replicate(self, *, study: str | None = None, patient: str | None = None, urgent: bool = False) -> dict:
        body: dict[str, Any] = {"urgent": urgent}
        if study is not None:
            body["study"] = study
        if patient is not None:
            body["patient"] = patient
        return self.post("kontur/replicate", body)

    def parked(self) -> list[dict]:
        return self.get("kontur/replication/parked").get("parked", [])

    def release_parked(self, reason: str) -> list[dict]:
        return self.post("kontur/replicate", {"release_parked": True, "reason": reason}).get("released", [])

    def problems(self) -> dict:
        return self.get("kontur/replication/problems")

    def correct(self, body: dict) -> dict:
        return self.post("kontur/correct", body)

    # --- the transfer package's routes (issue 10) ------------------------------

    def quarantine(self) -> dict:
        return self.get("kontur/quarantine")

    def validation(self, study: str) -> dict:
        return self.get(f"kontur/validation/{urllib.parse.quote(study, safe='')}")

    def release_quarantine(self, study: str, reason: str) -> dict:
        return self.post("kontur/quarantine/release", {"study": study, "reason": reason})

    def lookup(self, value: str) -> list[dict]:
        """Orthanc's /tools/lookup: the resources a DICOM UID or PatientID names here."""
        return self.request_raw_post("tools/lookup", value.encode("utf-8"))

    def request_raw_post(self, path: str, data: bytes) -> Any:
        url = self.base_url + path.lstrip("/")
        req = urllib.request.Request(url, data=data, method="POST",
                                     headers={**self._headers, "Content-Type": "text/plain"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=self._context) as resp:
                return decode_body(resp.read())
        except urllib.error.HTTPError as exc:
            raise NodeError(f"{self.name}: POST /{path}: HTTP {exc.code}", exc.code, None) from None
        except (urllib.error.URLError, OSError, ssl.SSLError) as exc:
            reason = getattr(exc, "reason", exc)
            raise NodeError(f"{self.name}: unreachable at {self.base_url}: {reason}") from None


def client_for(where: "Target | Region", node: str, *, lab: bool = False,
               secrets_dir: str | None = None) -> NodeClient:
    """The client of ``node`` for the control machine (service account
    ``kontur``, mutual TLS with the operator certificate).

    ``where``: the :class:`~kontur.target.Target` (the production region or
    the running lab, its secrets store); a region is made one with ``lab`` and
    ``secrets_dir`` (:func:`kontur.target.resolve`: in the lab the node is
    reached at its lab address, with the lab's secrets store, the one
    ``kontur deploy --lab`` rendered from)."""
    from . import target
    from .pki import operator_cert

    t = where if isinstance(where, target.Target) else target.resolve(where, lab=lab, secrets_dir=secrets_dir)
    region = t.region
    if node not in region.nodes:
        raise InvalidInput(f"node {node!r} is not in the inventory")
    spec = region.nodes[node]
    how = "`kontur deploy --lab`" if t.lab else "`kontur render` (or deploy)"
    store = t.existing_store()
    password = store.get(f"nodes/{node}/{SERVICE_USER}")
    if password is None:
        raise InvalidInput(f"the secrets store {store.dir} has no password for nodes/{node}/{SERVICE_USER}; "
                           f"run {how} first")
    ca, cert, key = operator_cert(store, region.region.title)
    url = f"https://{spec.address}:{region.ports(node).https}/"
    return NodeClient(url, SERVICE_USER, password, str(ca), str(cert), str(key), name=node)
