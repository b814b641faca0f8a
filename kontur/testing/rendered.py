"""A node exactly as kontur renders it, run on loopback for tests.

:class:`RenderedNode` renders one node of a region with :func:`kontur.render.render_node`
(a secrets store in the test's directory) and runs

- Debian's Orthanc with the rendered ``orthanc.json``, ``dicom.json``,
  ``plugins.json`` and ``credentials.json`` -- security baseline,
  ``LimitFindResults``, the roles table and ``roles.lua``, DICOMweb, kontur's
  Python plugin with the node's rendered policy -- changed only where a test
  host must differ: paths under the test's directory, loopback ports, and the
  index in SQLite instead of PostgreSQL;
- Debian's nginx with the rendered site (mutual TLS with the regional CA,
  keepalive to Orthanc), listening on a loopback port with a server
  certificate for 127.0.0.1 from the same regional CA.

Everything is stopped by PID (``stop()``, the context manager, and the
processes' own safety nets).
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from ..inventory import load
from ..pki import node_cert
from ..render import CRL_FILE, render_node
from ..render import orthanc as oc
from ..secrets import SecretStore
from .orthanc import LOOPBACK, OrthancProcess, free_port

REPO = Path(__file__).resolve().parents[2]
NGINX = "/usr/sbin/nginx"


class NginxProcess:
    """nginx in the foreground with one site, stopped by its PID."""

    def __init__(self, site: str, workdir: Path):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.site = site
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None

    def start(self, port: int) -> "NginxProcess":
        self.port = port
        (self.workdir / "site.conf").write_text(self.site)
        (self.workdir / "nginx.conf").write_text(
            "worker_processes 1;\n"
            f"pid {self.workdir}/nginx.pid;\n"
            f"error_log {self.workdir}/error.log info;\n"
            "events { worker_connections 256; }\n"
            "http {\n"
            f"  access_log {self.workdir}/access.log;\n"
            f"  client_body_temp_path {self.workdir}/body;\n"
            f"  proxy_temp_path {self.workdir}/proxy;\n"
            f"  include {self.workdir}/site.conf;\n"
            "}\n")
        log = open(self.workdir / "stderr.log", "ab")
        self.proc = subprocess.Popen([NGINX, "-p", str(self.workdir), "-c", str(self.workdir / "nginx.conf"),
                                      "-g", "daemon off; user root;"], stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited ({self.proc.returncode}): "
                                   f"{(self.workdir / 'stderr.log').read_text()[-2000:]}"
                                   f"{(self.workdir / 'error.log').read_text()[-2000:] if (self.workdir / 'error.log').exists() else ''}")
            try:
                with socket.create_connection((LOOPBACK, port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("nginx did not listen within 30 s")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=20)
        self.proc = None

    def access_log(self) -> str:
        p = self.workdir / "access.log"
        return p.read_text() if p.exists() else ""


class RenderedNode:
    """One node of ``region_file`` as rendered, on loopback (see the module docstring)."""

    def __init__(self, region_file: str | Path, node: str, workdir: str | Path, *,
                 store: SecretStore | None = None, extra_config: dict[str, Any] | None = None):
        self.region = load(Path(region_file))
        self.node = node
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.store = store or SecretStore(self.workdir / "secrets")
        self.bundle = render_node(self.region, node, self.store)
        self.tls = self.workdir / "tls"
        self.tls.mkdir(exist_ok=True)
        title = self.region.region.title
        pair = node_cert(self.store, title, f"{node}-loopback", [LOOPBACK])
        (self.tls / "ca.crt").write_bytes(self.bundle.file(oc.CA_FILE).content)
        (self.tls / "crl.pem").write_bytes(self.bundle.file(CRL_FILE).content)
        (self.tls / "node.crt").write_bytes(pair.cert_pem)
        (self.tls / "node.key").write_bytes(pair.key_pem)
        os.chmod(self.tls / "node.key", 0o600)
        self.config = self._orthanc_config()
        self.config.update(extra_config or {})
        self.password = self.store.get(f"nodes/{node}/{oc.SERVICE_USER}")
        self.orthanc = OrthancProcess(node, self.config, self.workdir / "orthanc", aet=self.region.nodes[node].aet,
                                      username=oc.SERVICE_USER, password=self.password)
        self.nginx: NginxProcess | None = None
        self.https_port = free_port()

    # --- configuration -----------------------------------------------------------

    def _json(self, path: str) -> dict:
        return json.loads(self.bundle.file(path).content)

    def _orthanc_config(self) -> dict:
        cfg: dict[str, Any] = {}
        for name in ("orthanc.json", "dicom.json", "plugins.json", "credentials.json"):
            for key, value in self._json(f"/etc/orthanc/{name}").items():
                if key in cfg:
                    raise AssertionError(f"{key} defined twice in the rendered configuration")
                cfg[key] = value
        # what a test host must change: the index (SQLite here), paths, ports
        cfg["Plugins"] = [p for p in cfg["Plugins"] if "PostgreSQL" not in p]
        cfg.pop("PostgreSQL", None)
        for key in ("StorageDirectory", "IndexDirectory", "HttpPort", "DicomPort"):
            cfg.pop(key, None)
        cfg["LuaScripts"] = [str(REPO / "orthanc-lua" / Path(p).name) for p in cfg.get("LuaScripts", [])]
        cfg["HttpsCACertificates"] = str(self.tls / "ca.crt")
        if "PythonScript" in cfg:
            cfg["PythonScript"] = str(REPO / "plugins" / "kontur_entry.py")
            policy = self._json(oc.POLICY_FILE)
            policy["state_dir"] = str(self.workdir / "state")
            self.policy_path = self.workdir / "policy.json"
            self.policy_path.write_text(json.dumps(policy, indent=2, sort_keys=True))
            cfg["Kontur"] = {"PolicyFile": str(self.policy_path)}
        return cfg

    def nginx_site(self, orthanc_port: int) -> str:
        site = self.bundle.file("/etc/nginx/sites-available/kontur.conf").text
        ports = self.region.ports(self.node)
        site = re.sub(rf"\blisten {ports.https} ssl;", f"listen {LOOPBACK}:{self.https_port} ssl;", site)
        site = site.replace(f"127.0.0.1:{ports.http}", f"127.0.0.1:{orthanc_port}")
        for name in ("ca.crt", "node.crt", "node.key", "crl.pem"):
            site = site.replace(f"{oc.TLS_DIR}/{name}", str(self.tls / name))
        if f"{LOOPBACK}:{self.https_port}" not in site:
            raise AssertionError("the rendered nginx site did not have the expected listen line")
        return site

    # --- credentials for the tests ----------------------------------------------------

    def peer_password(self, downstream: str) -> str:
        return self.store.get(f"links/{downstream}->{self.node}")

    def client_files(self, name: str) -> dict[str, str]:
        """The regional CA and a client certificate for ``name`` (a downstream node)."""
        pair = node_cert(self.store, self.region.region.title, name, [self.region.nodes[name].address]) \
            if name in self.region.nodes else node_cert(self.store, self.region.region.title, name, [], client_only=True)
        d = self.workdir / "clients" / name
        d.mkdir(parents=True, exist_ok=True)
        (d / "node.crt").write_bytes(pair.cert_pem)
        (d / "node.key").write_bytes(pair.key_pem)
        os.chmod(d / "node.key", 0o600)
        return {"ca_file": str(self.tls / "ca.crt"), "cert_file": str(d / "node.crt"), "key_file": str(d / "node.key")}

    @property
    def url(self) -> str:
        return f"https://{LOOPBACK}:{self.https_port}/"

    # --- life cycle --------------------------------------------------------------------

    def start(self) -> "RenderedNode":
        self.orthanc.start()
        try:
            self.nginx = NginxProcess(self.nginx_site(self.orthanc.http_port), self.workdir / "nginx")
            self.nginx.start(self.https_port)
        except Exception:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        try:
            if self.nginx is not None:
                self.nginx.stop()
        finally:
            self.orthanc.stop()

    def __enter__(self) -> "RenderedNode":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
