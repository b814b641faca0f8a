# SPDX-License-Identifier: AGPL-3.0-or-later
"""What ``kontur check`` asks a node, in one SSH round trip (run there by
``python3 -`` as root, standard library only; the parameters follow the
script on its stdin).  Read-only: it reads files, asks systemd, and asks the
node's own Orthanc over loopback as kontur's service account, whose password
it reads from the node's credentials file -- no secret travels or is printed.

It prints one JSON object; a part that fails says why in its own key and the
rest still answers.  ``kontur/health.py`` judges the answers.
"""
import binascii
import http.client
import json
import os
import ssl
import subprocess
import sys
import threading
import time

# http.client and threading rather than urllib.request and concurrent.futures:
# the same standard library one layer down, a third less to import on every
# node at every check (the probe's imports were a third of its CPU)


def _request(conn, path, headers=None, method="GET", body=None):
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def _rest(port, path, auth=None, method="GET", body=None, timeout=8):
    headers = {}
    if auth is not None:
        headers["Authorization"] = "Basic " + binascii.b2a_base64(auth.encode(), newline=False).decode()
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    status, raw = _request(http.client.HTTPConnection("127.0.0.1", port, timeout=timeout), path, headers,
                           method, data)
    if status >= 400:
        return status, None
    return status, (json.loads(raw) if raw[:1] in (b"{", b"[") else raw.decode("utf-8", "replace"))


def _at_once(calls, limit=8):
    """Each ``(fn, *args)`` in a thread of its own, at most ``limit`` at a time
    (they wait on sockets and processes); their answers in order, a failure
    as ``{"error": ...}`` (:func:`_guard`)."""
    answers = [None] * len(calls)
    slots = threading.Semaphore(limit)

    def run(i, call):
        with slots:
            answers[i] = _guard(*call)
    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return answers


def _guard(fn, *args):
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001 - a part that fails says why, the rest answers
        return {"error": f"{type(exc).__name__}: {exc}"[:300]}


def units(names):
    p = subprocess.run(["systemctl", "is-active", *names], stdout=subprocess.PIPE, text=True, timeout=10)
    states = p.stdout.split()
    return dict(zip(names, states + ["unknown"] * (len(names) - len(states))))


def disk(paths):
    out = {}
    for label, path in paths.items():
        if not path:
            continue
        while path != "/" and not os.path.exists(path):
            path = os.path.dirname(path)
        st = os.statvfs(path)
        used = (st.f_blocks - st.f_bfree) * st.f_frsize
        avail = st.f_bavail * st.f_frsize
        out[label] = {"path": path, "used_percent": round(100.0 * used / (used + avail), 1) if used + avail else 0.0,
                      "free_bytes": avail}
    return out


def _next_update(path):
    """(nextUpdate as seconds, issuer) of a PEM certificate revocation list, by openssl."""
    p = subprocess.run(["openssl", "crl", "-noout", "-nextupdate", "-issuer", "-in", path],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=10)
    fields = dict(line.split("=", 1) for line in p.stdout.splitlines() if "=" in line)
    if p.returncode != 0 or "nextUpdate" not in fields:
        raise ValueError(p.stderr.strip()[:200] or "not a revocation list with a next update")
    import calendar
    end = calendar.timegm(time.strptime(fields["nextUpdate"].replace(" GMT", ""), "%b %d %H:%M:%S %Y"))
    return end, fields.get("issuer", "").strip()


def _not_after(path):
    """(notAfter as seconds, subject) of a PEM certificate: CPython's own decoder (no process
    per certificate), else openssl; of a revocation list, its next update."""
    if path.endswith("/crl.pem"):
        return _next_update(path)
    try:
        decoded = ssl._ssl._test_decode_cert(path)      # in CPython since 3.3; Debian 12 and 13
        subject = ",".join("=".join(kv) for rdn in decoded.get("subject", ()) for kv in rdn)
        return ssl.cert_time_to_seconds(decoded["notAfter"]), subject
    except (AttributeError, KeyError, ValueError, ssl.SSLError):
        p = subprocess.run(["openssl", "x509", "-noout", "-enddate", "-subject", "-in", path],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=10)
        if p.returncode != 0:
            raise ValueError(p.stderr.strip()[:200] or "not a certificate")
        fields = dict(line.split("=", 1) for line in p.stdout.splitlines() if "=" in line)
        import calendar
        end = calendar.timegm(time.strptime(fields["notAfter"].replace(" GMT", ""), "%b %d %H:%M:%S %Y"))
        return end, fields.get("subject", "").strip()


def certificates(paths):
    out = {}
    for path in paths:
        if not os.path.exists(path):
            out[path] = {"error": "missing"}
            continue
        try:
            end, subject = _not_after(path)
        except ValueError as exc:
            out[path] = {"error": str(exc)}
            continue
        out[path] = {"not_after": round(end), "subject": subject}
    return out


def orthanc(params):
    port = params["http"]
    users = json.load(open("/etc/orthanc/credentials.json"))["RegisteredUsers"]
    auth = "kontur:" + users["kontur"]
    res = {}
    code, system = _rest(port, "/system", auth)
    res["rest"] = {"status": code, "aet": (system or {}).get("DicomAet") if isinstance(system, dict) else None}
    # the defaults Debian ships and an empty password must both be refused
    res["default_credentials"] = _rest(port, "/system", "orthanc:orthanc")[0]
    res["no_credentials"] = _rest(port, "/system")[0]
    if code != 200:
        return res
    code, configured = _rest(port, "/modalities", auth)
    res["modalities"] = configured if code == 200 else {"error": f"HTTP {code}"}

    def echo(key):
        c, _ = _rest(port, f"/modalities/{key}/echo", auth, "POST", {"Timeout": 3}, timeout=10)
        return key, c == 200
    keys = [k for k in (configured if isinstance(configured, list) else []) if k in params.get("echo_peers", [])]
    answers = _at_once([(echo, k) for k in keys])
    res["echo_peers"] = {k: isinstance(a, tuple) and a[1] for k, a in zip(keys, answers)}
    code, rep = _rest(port, "/kontur/replication", auth)
    res["replication"] = rep if code == 200 else {"error": f"HTTP {code}"}
    code, seen = _rest(port, "/kontur/seen", auth)
    res["seen"] = seen if code == 200 else {"error": f"HTTP {code}"}
    return res


def echo_in(params):
    """C-ECHO to this node's DICOM port over loopback (the firewall takes DICOM
    from the hospital's devices only): as kontur's HL7 service when the node
    declares it, else as an unknown AE, whose refusal proves the port answers."""
    calling = params.get("echo_aet") or "KONTUR_CHECK"
    env = dict(os.environ, TCP_NODELAY="1")
    p = subprocess.run(["echoscu", "-ta", "5", "-td", "5", "-to", "5", "-aet", calling, "-aec", params["aet"],
                        "127.0.0.1", str(params["dicom"])], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, timeout=20, env=env)
    text = p.stdout.strip()
    answered = p.returncode == 0 or "Association Rejected" in text
    return {"ok": answered if not params.get("echo_aet") else p.returncode == 0, "answered": answered,
            "detail": text.splitlines()[-1][:200] if text else ""}


def https_refuses_without_certificate(params):
    """nginx's mutual TLS: a client without a certificate must be refused (HTTP 400)."""
    ctx = ssl.create_default_context(cafile="/etc/kontur/tls/ca.crt")
    ctx.check_hostname = False
    status, _ = _request(http.client.HTTPSConnection("127.0.0.1", params["https"], timeout=8, context=ctx),
                         "/system")
    return {"status": status}


def main(params):
    started = time.time()
    out = {"now": started, "units": _guard(units, params["units"]),
           "disk": _guard(disk, params.get("disk", {})),
           "certificates": _guard(certificates, params.get("certificates", []))}
    if params.get("archive"):
        out["orthanc"], out["echo"], out["tls_without_certificate"] = _at_once(
            [(orthanc, params), (echo_in, params), (https_refuses_without_certificate, params)])
    out["seconds"] = round(time.time() - started, 2)
    sys.stdout.write(json.dumps(out))


if __name__ == "__main__" and len(sys.argv) > 1:  # on a workstation: python3 health_probe.py '{"units": [...]}'
    main(json.loads(sys.argv[1]))
