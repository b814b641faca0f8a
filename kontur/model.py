"""The region as data: the validated inventory model.

The YAML inventory is parsed into these classes (shape and types: pydantic),
then checked as a whole by :mod:`kontur.rules` (references, uniqueness,
routes).  Everything downstream -- rendering, the pyinfra inventory, the lab,
the checks -- reads this model, never the raw YAML.
"""
from __future__ import annotations

import ipaddress
import re
import zoneinfo
from enum import Enum
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

SCHEMA_VERSION = 1

# --- value types ---------------------------------------------------------

#: modality codes from R14 (plus the secondary-capture/other codes sites use)
MODALITY_CODES = (
    "CT", "MR", "NM", "PT", "DX", "CR", "MG", "US", "ES", "XA", "RF",
    "OT", "SC", "XC", "IO", "PX", "OP",
)

_HOSTNAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_SLUG_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,46}[a-z0-9])?$")
_WINDOW_RE = re.compile(r"^(\d{2}):(\d{2})-(\d{2}):(\d{2})$")


def check_aet(value: str) -> str:
    """A DICOM AE title: 1-16 characters of the default repertoire, no
    backslash, no control characters, not only spaces (PS3.5 table 6.2-1)."""
    if not isinstance(value, str):
        raise ValueError("an AE title must be text")
    if not 1 <= len(value) <= 16:
        raise ValueError(
            f"AE title {value!r} has {len(value)} characters; expected 1 to 16")
    if value.strip(" ") == "":
        raise ValueError("AE title is only spaces; expected 1 to 16 visible characters")
    bad = [c for c in value if c == "\\" or ord(c) < 32 or ord(c) > 126]
    if bad:
        raise ValueError(
            f"AE title {value!r} contains {bad[0]!r}; expected ASCII letters, digits, "
            "spaces and punctuation other than backslash")
    if value != value.strip(" "):
        raise ValueError(f"AE title {value!r} has leading or trailing spaces, which DICOM ignores")
    return value


def check_hostname(value: str) -> str:
    if not _HOSTNAME_RE.match(value):
        raise ValueError(
            f"{value!r} is not a valid host name; expected lowercase letters, digits and "
            "hyphens, 1-63 characters, not starting or ending with a hyphen")
    return value


def check_slug(value: str) -> str:
    if not _SLUG_RE.match(value):
        raise ValueError(
            f"{value!r} is not a valid identifier; expected lowercase letters, digits and "
            "hyphens, 1-48 characters, not starting or ending with a hyphen")
    return value


def check_ipv4(value: str) -> str:
    try:
        ipaddress.IPv4Address(value)
    except (ipaddress.AddressValueError, ValueError):
        raise ValueError(f"{value!r} is not an IPv4 address; expected four numbers 0-255 such as 10.42.1.10") from None
    return value


def check_network(value: str) -> str:
    try:
        ipaddress.IPv4Network(value, strict=True)
    except ValueError as exc:
        raise ValueError(f"{value!r} is not an IPv4 network; expected CIDR such as 10.42.0.0/16 ({exc})") from None
    return value


def check_window(value: str) -> str:
    m = _WINDOW_RE.match(value)
    if not m:
        raise ValueError(f"{value!r} is not a transfer window; expected HH:MM-HH:MM such as 20:00-07:00")
    h1, m1, h2, m2 = (int(g) for g in m.groups())
    if h1 > 23 or h2 > 23 or m1 > 59 or m2 > 59:
        raise ValueError(f"{value!r} has a time outside 00:00-23:59")
    if (h1, m1) == (h2, m2):
        raise ValueError(f"{value!r} starts and ends at the same time; for 'always' leave windows empty")
    return value


def check_code(value: str) -> str:
    """A code as an HL7 v2 component carries it: 1-64 characters, no delimiter."""
    if not value or len(value) > 64 or any(c in "|^~\\&" or ord(c) < 32 for c in value):
        raise ValueError(f"{value!r} is not a code as an HL7 v2 field carries it; expected 1-64 characters "
                         "without | ^ ~ \\ & or control characters, such as C34.1")
    return value


AET = Annotated[str, AfterValidator(check_aet)]
Code = Annotated[str, AfterValidator(check_code)]
HostName = Annotated[str, AfterValidator(check_hostname)]
Slug = Annotated[str, AfterValidator(check_slug)]
IPv4 = Annotated[str, AfterValidator(check_ipv4)]
Network = Annotated[str, AfterValidator(check_network)]
Window = Annotated[str, AfterValidator(check_window)]
Port = Annotated[int, Field(ge=1, le=65535)]

#: keys that would carry a secret; they are refused anywhere in the inventory
SECRET_KEYS = frozenset({"password", "passwd", "secret", "private_key", "key", "token"})


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False, str_strip_whitespace=False)


# --- parts ----------------------------------------------------------------

class Ports(Strict):
    """Ports of the services a node runs.  Orthanc's HTTP port is bound to
    loopback behind nginx; ``https`` is the only HTTP port other hosts see."""
    dicom: Port = 4242
    http: Port = 8042
    https: Port = 443
    postgresql: Port = 5432
    ssh: Port = 22
    #: the HL7 service (LAMIs and gateways serving a hospital with a MIS): MLLP from the MIS
    hl7: Port = 2575
    #: its MPPS SCP, for the hospital's modalities
    mpps: Port = 4243


class PortsOverride(Strict):
    dicom: Port | None = None
    http: Port | None = None
    https: Port | None = None
    postgresql: Port | None = None
    ssh: Port | None = None
    hl7: Port | None = None
    mpps: Port | None = None


class Disk(Strict):
    warning_percent: int = Field(80, ge=1, le=99)
    critical_percent: int = Field(90, ge=2, le=100)

    @model_validator(mode="after")
    def _order(self) -> "Disk":
        if self.warning_percent >= self.critical_percent:
            raise ValueError(
                f"warning_percent ({self.warning_percent}) must be below "
                f"critical_percent ({self.critical_percent})")
        return self


class Person(Strict):
    """Responsible staff (R7): on-call must be able to reach them."""
    name: str = Field(min_length=1)
    position: str = Field(min_length=1)
    work_phone: str = Field(min_length=3)
    mobile_phone: str = Field(min_length=3)


class Policy(str, Enum):
    ALL = "all"                 # every study duplicated (Tyumen, Krasnoyarsk)
    PATHOLOGY = "pathology"     # only flagged studies (Kemerovo §3.2)
    ON_DEMAND = "on-demand"     # nothing automatic (§3.3: import on request)


class Replication(Strict):
    policy: Policy = Policy.ALL
    #: local time windows in the region's time zone; empty means any time
    windows: list[Window] = Field(default_factory=list)
    #: cap on the link to the TsAMI, megabits per second; none means no cap
    bandwidth_mbit: float | None = Field(None, gt=0)
    #: a study must be delivered within this many hours of becoming ready
    deadline_hours: int = Field(24, ge=1, le=24 * 30)
    #: gateways: days to keep a study after its delivery was verified
    retention_days: int = Field(7, ge=0, le=3650)


#: the transfer package's rules (plugins/kontur_plugins/transfer/rules.py has their meaning)
TransferRule = Literal["original_quality", "patient_id", "study_uid", "patient_name", "birth_date", "sex",
                       "physician", "procedure", "report"]
#: DICOM keyword paths (Keyword/Keyword through sequences) where the rules look
AttributePath = Annotated[str, Field(pattern=r"^[A-Z][A-Za-z0-9]*(/[A-Z][A-Za-z0-9]*)*$")]


class Classifier(Strict):
    """The regional classifier of procedures (CSV with columns code,name, or
    YAML ``codes: {code: name}``), versioned; ``kontur validate`` reads it and
    the renderer ships its codes to every forwarding node."""
    file: str | None = None
    version: str = Field(min_length=1, max_length=64)
    #: filled from ``file`` when the inventory is loaded (or written inline)
    codes: dict[str, str] = Field(default_factory=dict)


class TransferPackage(Strict):
    """Reglament 004 §5.6: what a study must carry before it leaves a hospital (issue 10)."""
    classifier: Classifier | None = None
    #: local: Patient ID as the hospital's devices write it; regional: "ISSUER:ID" at
    #: ingest, the hospital's own ID kept in Other Patient IDs Sequence, so the TsAMI
    #: (which keys patients by Patient ID alone) keeps two hospitals' patients apart
    patient_key: Literal["local", "regional"] = "local"
    #: rules switched on or off region-wide (all on by default)
    rules: dict[TransferRule, bool] = Field(default_factory=dict)
    physician_code: list[AttributePath] | None = None
    physician_name: list[AttributePath] | None = None
    procedure_code: list[AttributePath] | None = None


#: what kontur does (and does not yet do) for a legacy device, said wherever one shows up
LEGACY_NOTE = ("a legacy device (legacy_folder: true) cannot send over DICOM, and kontur does not deploy an "
               "incoming folder for it yet: it is left out of its node's DICOM peers and firewall, and its "
               "studies must be imported by hand (e.g. storescu from a workstation)")


class Modality(Strict):
    aet: AET
    host: IPv4
    port: Port = 104
    modality: str
    name: Slug | None = None
    vendor: str | None = None
    model: str | None = None
    studies_per_day: int = Field(0, ge=0, le=100000)
    #: a legacy device that cannot speak DICOM network drops files into a folder (R8)
    legacy_folder: bool = False
    #: the names the hospital's MIS uses for this device in its orders (IPC-7), besides its AE title
    station_names: list[str] = Field(default_factory=list)

    @field_validator("modality")
    @classmethod
    def _code(cls, value: str) -> str:
        if value not in MODALITY_CODES:
            raise ValueError(
                f"{value!r} is not a modality code; expected one of {', '.join(MODALITY_CODES)}")
        return value

    @property
    def key(self) -> str:
        """Symbolic name in Orthanc's DicomModalities."""
        return self.name or self.aet.lower().replace("_", "-").replace(" ", "-")


class Mis(Strict):
    """The hospital information system's HL7 v2 (MLLP) endpoint (R5)."""
    host: IPv4
    port: Port = 2575
    facility: str | None = None
    #: coded findings (the code of an OBX-5 CE/CWE value, e.g. ICD-10 "C34.1") that mark
    #: a result as pathology, besides OBX-8's abnormal flags (Kemerovo §3.2; issue 12)
    pathology_codes: list[Code] = Field(default_factory=list)


class HospitalType(int, Enum):
    LAMI = 1        # more than two devices: own local archive
    GATEWAY = 2     # two or fewer: DICOM gateway to the TsAMI
    REFERENCE = 3   # consultative / reference centre


class Hospital(Strict):
    title: str = Field(min_length=1)
    type: HospitalType
    network: Network | None = None
    node: HostName | None = None
    staff: list[Person] = Field(default_factory=list)
    mis: Mis | None = None
    replication: Replication = Field(default_factory=Replication)
    modalities: list[Modality] = Field(default_factory=list)
    #: a mobile unit's link comes and goes (R10)
    intermittent_link: bool = False
    #: Issuer of Patient ID (0010,0021) stamped at ingest on what this hospital's
    #: devices send; default "<region code>-<HOSPITAL KEY>" (issue 10)
    patient_id_issuer: str | None = Field(None, pattern=r"^[^\\\x00-\x1f]{1,64}$")
    #: the transfer package: enforce (a failing study is quarantined here) or
    #: warn (it goes, and the findings are recorded).  warn by default: a region
    #: sees what its devices send before it turns enforce on, hospital by hospital
    validation: Literal["enforce", "warn"] = "warn"
    #: per-hospital overrides of the region's rules
    transfer_rules: dict[TransferRule, bool] = Field(default_factory=dict)


class Role(str, Enum):
    TSAMI = "tsami"
    LAMI = "lami"
    GATEWAY = "gateway"
    REFERENCE = "reference"
    RESEARCH = "research"


ARCHIVE_ROLES = (Role.TSAMI, Role.LAMI, Role.GATEWAY, Role.RESEARCH)


class Node(Strict):
    role: Role
    address: IPv4
    title: str | None = None
    aet: AET | None = None
    #: where this node sends (LAMI, gateway): a node name, normally the TsAMI
    upstream: HostName | None = None
    #: reference centre: the archive its users read
    reads_from: HostName | None = None
    #: Orthanc index: PostgreSQL on the node, or SQLite for a short-lived buffer
    index: Literal["postgresql", "sqlite"] | None = None
    ports: PortsOverride = Field(default_factory=PortsOverride)
    disk: Disk | None = None
    storage_dir: str = "/var/lib/orthanc/db"

    @field_validator("storage_dir")
    @classmethod
    def _abs(cls, value: str) -> str:
        if not value.startswith("/") or ".." in value.split("/"):
            raise ValueError(f"{value!r} is not an absolute path without '..'")
        return value


class Permissions(Strict):
    view: bool = True
    download: bool = False
    upload: bool = False
    delete: bool = False
    admin: bool = False


class User(Strict):
    login: Slug
    name: str = Field(min_length=1)
    role: Slug
    hospital: Slug | None = None
    #: nodes where this user may log in; default: their hospital's node and the TsAMI
    nodes: list[HostName] | None = None


class RegionInfo(Strict):
    name: Slug
    title: str = Field(min_length=1)
    code: str = Field(pattern=r"^[0-9]{2,3}$")
    timezone: str = "Europe/Moscow"
    secure_network: Network
    admin_networks: list[Network] = Field(default_factory=list)
    #: base URL of the region's Debian mirror (a closed network has its own)
    package_mirror: str | None = None
    #: Orthanc's DefaultEncoding: Utf8 keeps Cyrillic names intact
    encoding: Literal["Utf8", "Latin1", "Cyrillic"] = "Utf8"

    @field_validator("timezone")
    @classmethod
    def _tz(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not a time zone; expected an IANA name such as Asia/Novokuznetsk") from None
        return value


class Defaults(Strict):
    ports: Ports = Field(default_factory=Ports)
    disk: Disk = Field(default_factory=Disk)
    #: seconds without a new instance before Orthanc calls a study stable
    stable_age: int = Field(60, ge=5, le=3600)


class Centre(Strict):
    title: str = Field(min_length=1)
    staff: list[Person] = Field(default_factory=list)


class Region(Strict):
    kontur: Literal[1] = SCHEMA_VERSION
    region: RegionInfo
    centre: Centre
    defaults: Defaults = Field(default_factory=Defaults)
    nodes: dict[HostName, Node]
    hospitals: dict[Slug, Hospital] = Field(default_factory=dict)
    transfer: TransferPackage = Field(default_factory=TransferPackage)
    roles: dict[Slug, Permissions] = Field(default_factory=dict)
    users: list[User] = Field(default_factory=list)

    # --- derived views (read-only helpers used by render, lab, checks) ---

    def ports(self, node: str) -> Ports:
        base = self.defaults.ports.model_dump()
        base.update({k: v for k, v in self.nodes[node].ports.model_dump().items() if v is not None})
        return Ports(**base)

    def disk(self, node: str) -> Disk:
        return self.nodes[node].disk or self.defaults.disk

    def nodes_by_role(self, role: Role) -> list[str]:
        return [n for n, spec in self.nodes.items() if spec.role == role]

    def issuer_of(self, hospital: str) -> str:
        """The Issuer of Patient ID of ``hospital``'s patients."""
        return self.hospitals[hospital].patient_id_issuer or f"{self.region.code}-{hospital.upper()}"

    def hospital_of(self, node: str) -> str | None:
        for key, h in self.hospitals.items():
            if h.node == node:
                return key
        return None

    def modalities_of(self, node: str) -> list[tuple[str, Modality]]:
        """(hospital, modality) pairs that send to ``node``."""
        return [(hk, m) for hk, h in self.hospitals.items() if h.node == node for m in h.modalities]

    def mis_hospitals(self, node: str) -> list[str]:
        """The hospitals whose MIS sends orders to ``node`` (its LAMI or gateway): the HL7 service runs there."""
        return [hk for hk, h in self.hospitals.items() if h.node == node and h.mis is not None
                and self.nodes.get(node) is not None and self.nodes[node].role in (Role.LAMI, Role.GATEWAY)]

    def dicom_senders(self, node: str) -> list[tuple[str, Modality]]:
        """The modalities that send to ``node`` over the DICOM network: every one
        but legacy devices (``legacy_folder``), which cannot."""
        return [(hk, m) for hk, m in self.modalities_of(node) if not m.legacy_folder]

    def legacy_devices(self) -> list[tuple[str, Modality]]:
        """(hospital, modality) of every legacy device (R8)."""
        return [(hk, m) for hk, h in self.hospitals.items() for m in h.modalities if m.legacy_folder]

    def downstream_of(self, node: str) -> list[str]:
        """Nodes whose upstream is ``node`` (the TsAMI's LAMIs and gateways)."""
        return [n for n, spec in self.nodes.items() if spec.upstream == node]

    def index_of(self, node: str) -> str:
        spec = self.nodes[node]
        if spec.index:
            return spec.index
        return "sqlite" if spec.role == Role.GATEWAY else "postgresql"

    def find_modality(self, ident: str) -> tuple[str, int, Modality] | None:
        """Find a modality by AE title or name: (hospital, index, modality)."""
        for hk, h in self.hospitals.items():
            for i, m in enumerate(h.modalities):
                if ident in (m.aet, m.key):
                    return hk, i, m
        return None

    def users_of(self, node: str) -> list[User]:
        tsamis = set(self.nodes_by_role(Role.TSAMI))
        out = []
        for u in self.users:
            if u.nodes is not None:
                allowed = set(u.nodes)
            else:
                allowed = set(tsamis)
                if u.hospital and u.hospital in self.hospitals and self.hospitals[u.hospital].node:
                    allowed.add(self.hospitals[u.hospital].node)
            if node in allowed:
                out.append(u)
        return out

    def all_addresses(self) -> list[str]:
        """Every inventory address a lab has to map (nodes, modalities, MIS)."""
        seen: dict[str, None] = {}
        for spec in self.nodes.values():
            seen[spec.address] = None
        for h in self.hospitals.values():
            for m in h.modalities:
                seen[m.host] = None
            if h.mis:
                seen[h.mis.host] = None
        return list(seen)

    def with_addresses(self, mapping: dict[str, str], *, network: str | None = None,
                       admin_networks: list[str] | None = None) -> "Region":
        """A copy with every address translated through ``mapping`` (the lab).

        Networks cannot be translated address by address: a lab passes its own
        ``network`` (it becomes the secure network and every hospital's
        network) and the ``admin_networks`` its control machine connects from,
        so the rendered firewall lets the lab's operator in."""
        data = self.model_dump(mode="json")
        if network is not None:
            data["region"]["secure_network"] = network
            for h in data["hospitals"].values():
                if h.get("network"):
                    h["network"] = network
        if admin_networks is not None:
            data["region"]["admin_networks"] = list(admin_networks)
        for spec in data["nodes"].values():
            spec["address"] = mapping.get(spec["address"], spec["address"])
        for h in data["hospitals"].values():
            for m in h["modalities"]:
                m["host"] = mapping.get(m["host"], m["host"])
            if h.get("mis"):
                h["mis"]["host"] = mapping.get(h["mis"]["host"], h["mis"]["host"])
        return Region.model_validate(data)
