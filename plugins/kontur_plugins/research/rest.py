# SPDX-License-Identifier: AGPL-3.0-or-later
"""The exporter's archive over Orthanc's REST API (standard library only): the
exporting node's own Orthanc, which also sends each copy on to the research
node, its peer (``/peers/{name}/store-straight``).  Credentials come from a
file, never a command line."""
from __future__ import annotations

import base64
import json
import ssl
import urllib.request


class Endpoint:
    def __init__(self, url: str, username: str | None = None, password: str | None = None,
                 context: ssl.SSLContext | None = None, timeout: float = 120):
        self.url, self.timeout, self.context = url.rstrip("/"), timeout, context
        self.headers = {}
        if username is not None:
            token = base64.b64encode(f"{username}:{password or ''}".encode()).decode()
            self.headers["Authorization"] = f"Basic {token}"

    def call(self, method: str, path: str, body: bytes | dict | None = None) -> bytes:
        headers = dict(self.headers)
        if isinstance(body, dict):
            body = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        elif body is not None:
            headers["Content-Type"] = "application/dicom"
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers)
        with urllib.request.urlopen(req, timeout=self.timeout, context=self.context) as resp:
            return resp.read()


class OrthancArchive:
    """The :class:`~.export.Archive` of an Orthanc reached over REST."""

    def __init__(self, endpoint: Endpoint):
        self.ep = endpoint

    def study_instances(self, study_id: str) -> list[str]:
        return [i["ID"] for i in json.loads(self.ep.call("GET", f"/studies/{study_id}/instances"))]

    def file(self, instance_id: str) -> bytes:
        return self.ep.call("GET", f"/instances/{instance_id}/file")

    def anonymize(self, instance_id: str, body: dict) -> bytes:
        return self.ep.call("POST", f"/instances/{instance_id}/anonymize", body)

    def studies(self) -> list[str]:
        return json.loads(self.ep.call("GET", "/studies"))


    def changes(self, since: int, limit: int = 500) -> dict:
        return json.loads(self.ep.call("GET", f"/changes?since={since}&limit={limit}"))

    def study_date(self, study_id: str) -> str:
        return json.loads(self.ep.call("GET", f"/studies/{study_id}")).get("MainDicomTags", {}).get("StudyDate", "")

    def store_at_peer(self, peer: str, data: bytes) -> None:
        """Send one instance to the Orthanc peer ``peer`` (its URL, account and mutual TLS are in this
        Orthanc's configuration: the exporter holds no credentials of the destination), storing
        nothing here; refused unless the peer answers Success."""
        answer = json.loads(self.ep.call("POST", f"/peers/{peer}/store-straight", data))
        if answer.get("Status") not in ("Success", "AlreadyStored"):
            raise RuntimeError(f"the peer {peer} answered {answer.get('Status')!r}")


    def find_study(self, study_uid: str) -> str | None:
        """The Orthanc ID of the study with this Study Instance UID here, if it is here."""
        found = json.loads(self.ep.call("POST", "/tools/lookup", study_uid.encode()))
        return next((r["ID"] for r in found if r.get("Type") == "Study"), None)

    def send_study(self, peer: str, study_id: str) -> int:
        """Send a whole study here to the Orthanc peer ``peer`` (a clinical archive; this Orthanc's peer
        entry holds its URL, account and mutual TLS); the number of instances sent."""
        answer = json.loads(self.ep.call("POST", f"/peers/{peer}/store",
                                         {"Resources": [study_id], "Synchronous": True}))
        failed = int(answer.get("FailedInstancesCount", 0) or 0)
        if failed:
            raise RuntimeError(f"the peer {peer} refused {failed} instance(s)")
        return int(answer.get("InstancesCount", 0) or 0)


def endpoint_from(doc: dict) -> Endpoint:
    return Endpoint(doc["url"], doc.get("username"), doc.get("password"))
