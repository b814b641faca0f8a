"""Helpers the controls share to ask a node (not controls themselves)."""
from __future__ import annotations

#: where a node keeps Orthanc's users (root and orthanc read it)
CREDENTIALS = "/etc/orthanc/credentials.json"
#: where kontur installs its plugin's pure modules on every Orthanc node (the transfer package's rules)
PLUGINS = "/usr/lib/kontur/plugins"


#: asks the node's own Orthanc as kontur's service account, with the password read on
#: the node from the file only root and orthanc read: no secret in a command line, in
#: transit or in a report.  Prints the HTTP status, a newline, the body.
AS_SERVICE = """python3 - <<'KONTUR'
import base64, json, sys, urllib.error, urllib.request
users = json.load(open(%r))["RegisteredUsers"]
token = base64.b64encode(("kontur:" + users["kontur"]).encode()).decode()
req = urllib.request.Request("http://127.0.0.1:%d%s", method="%s", data=%r,
                             headers={"Authorization": "Basic " + token})
try:
    with urllib.request.urlopen(req, timeout=10) as r:
        sys.stdout.write("%%d\\n%%s" %% (r.status, r.read().decode()))
except urllib.error.HTTPError as exc:
    sys.stdout.write("%%d\\n" %% exc.code)
KONTUR"""


def as_service_script(port: int, path: str, method: str = "GET", body: bytes | None = None,
                      credentials: str = CREDENTIALS) -> str:
    return AS_SERVICE % (credentials, port, path, method, body)


def as_service(host, port: int, path: str, method: str = "GET", body: bytes | None = None,
               credentials: str = CREDENTIALS) -> tuple[int, str]:
    run = host.run(as_service_script(port, path, method, body, credentials))
    assert run.rc == 0, f"REST {method} {path} as the service account failed: {run.stderr.strip()[-300:]}"
    status, _, text = run.stdout.partition("\n")
    return int(status), text
