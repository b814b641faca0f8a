"""The region as data: the validated inventory model.

The YAML inventory is parsed into these classes (shape and types: pydantic),
then checked as a whole by :mod:`kontur.rules` (references, uniqueness,
routes).  Everything downstream -- rendering, the pyinfra inventory, the lab,
the checks -- reads this model, never the raw YAML.
"""
from __future__ import annotations

import ipaddress
import math
import posixpath
import re
import unicodedata
import zoneinfo
from enum import Enum
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
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

# Every pattern is matched with re.fullmatch and ASCII classes only: ``^...$``
# with re.match accepts a trailing newline ("okb-lami\n" would land in
# nftables.conf) and ``\d`` accepts any Unicode digit (full-width "４２").
_HOSTNAME_RE = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", re.ASCII)
_SLUG_RE = re.compile(r"[a-z0-9]([a-z0-9-]{0,46}[a-z0-9])?", re.ASCII)
_WINDOW_RE = re.compile(r"([0-9]{2}):([0-9]{2})-([0-9]{2}):([0-9]{2})", re.ASCII)
_REGION_CODE_RE = re.compile(r"[0-9]{2,3}", re.ASCII)
_ATTRIBUTE_PATH_RE = re.compile(r"[A-Z][A-Za-z0-9]*(/[A-Z][A-Za-z0-9]*)*", re.ASCII)
_ISSUER_RE = re.compile(r"[^\\\x00-\x1f\x7f]{1,64}")
#: a mirror's host: DNS labels or an IPv4 address (IDNs in their xn-- form)
_URL_HOST_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*",
                          re.ASCII)
#: a mirror's path: RFC 3986 path characters (unreserved, sub-delims, ':', '@', '/', '%')
_URL_PATH_RE = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=:@/%-]+", re.ASCII)
#: the POSIX portable file name characters, and '/'
_PATH_RE = re.compile(r"[A-Za-z0-9._/-]+", re.ASCII)

#: Orthanc's storage lives strictly below one of these (the deploy chowns it to
#: orthanc: a system directory must never be one).  /var/lib/orthanc is the
#: Debian package's home of the orthanc user (its default storage is
#: /var/lib/orthanc/db); /srv is where a site mounts a dedicated archive disk.
#: The roots themselves are refused (chowning /srv or the orthanc home is not
#: kontur's to do), and nothing else kontur renders lives below them
#: (kontur's own state is /var/lib/kontur, PostgreSQL's /var/lib/postgresql).
STORAGE_ROOTS = ("/var/lib/orthanc", "/srv")

#: node names kontur's secrets store and bundles use for themselves: the
#: store keeps node certificates next to the CA (pki/ca.*), the control
#: machine's client certificate (pki/kontur-operator.*) and the users'
#: certificates (pki/users/); a node with one of these names would take
#: their files.  Names starting with RESERVED_NODE_PREFIX are kontur's too
#: (as logins starting with "kontur" are).
RESERVED_NODE_NAMES = frozenset({"ca", "kontur-operator", "users", "pki", "secrets"})
RESERVED_NODE_PREFIX = "kontur"

#: the widest network the inventory accepts (secure, admin and hospital
#: networks): 10.0.0.0/8, the largest private block (RFC 1918), is as wide
#: as any region's network gets; anything wider spans the public internet,
#: and a typo such as 0.0.0.0/0 would open HTTPS and ssh to everyone
WIDEST_PREFIX = 8


def control_character(value: str) -> str | None:
    """The first control character (C0, DEL, C1) or line/paragraph separator in ``value``."""
    for c in value:
        if unicodedata.category(c) in ("Cc", "Zl", "Zp"):
            return c
    return None


def check_text(value: str) -> str:
    """Free text (titles, names, phones...): anything printable, no control characters."""
    c = control_character(value)
    if c is not None:
        raise ValueError(
            f"{value!r} contains the control character {c!r} (U+{ord(c):04X}); expected text on one line "
            "without control characters (no newlines, tabs or escapes)")
    return value


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
    if not _HOSTNAME_RE.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a valid host name; expected lowercase letters, digits and "
            "hyphens, 1-63 characters, not starting or ending with a hyphen")
    return value


def check_slug(value: str) -> str:
    if not _SLUG_RE.fullmatch(value):
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
        net = ipaddress.IPv4Network(value, strict=True)
    except ValueError as exc:
        raise ValueError(f"{value!r} is not an IPv4 network; expected CIDR such as 10.42.0.0/16 ({exc})") from None
    if net.prefixlen == 0:
        raise ValueError(f"{value!r} is the whole internet; expected the region's own network, "
                         "such as 10.42.0.0/16")
    if net.prefixlen < WIDEST_PREFIX:
        raise ValueError(f"{value!r} is wider than /{WIDEST_PREFIX} (it reaches beyond any private "
                         "network); expected a network of the region, such as 10.42.0.0/16")
    return value


def check_window(value: str) -> str:
    m = _WINDOW_RE.fullmatch(value)
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


def check_region_code(value: str) -> str:
    if not _REGION_CODE_RE.fullmatch(value):
        raise ValueError(f"{value!r} is not a region code; expected 2 or 3 digits 0-9 in quotes, such as \"42\"")
    return value


def check_attribute_path(value: str) -> str:
    if not _ATTRIBUTE_PATH_RE.fullmatch(value):
        raise ValueError(f"{value!r} is not a DICOM keyword path; expected keywords separated by '/', such as "
                         "RequestAttributesSequence/RequestedProcedureCodeSequence")
    return value


def check_issuer(value: str) -> str:
    if not _ISSUER_RE.fullmatch(value) or control_character(value):
        raise ValueError(f"{value!r} is not an Issuer of Patient ID; expected 1-64 characters without "
                         "backslash or control characters, such as 42-ONCO")
    return value


def check_mirror(value: str) -> str:
    """The region's Debian mirror: a plain http(s) URL with a host and a path.
    It becomes the URIs of the apt source; kontur derives the security
    archive as ``<mirror>-security``, so the path must name a directory."""
    c = control_character(value)
    if c is not None:
        raise ValueError(f"{value!r} contains the control character {c!r}; expected one URL such as "
                         "http://mirror.example.org/debian")
    if any(ch.isspace() for ch in value):
        raise ValueError(f"{value!r} contains a space; expected one URL such as http://mirror.example.org/debian")
    try:
        url = urlsplit(value)
        port = url.port
    except ValueError:
        raise ValueError(f"{value!r} has an invalid host or port; expected a URL such as "
                         "http://mirror.example.org:8080/debian") from None
    if url.scheme not in ("http", "https"):
        raise ValueError(f"{value!r} is not an http or https URL; expected one such as http://mirror.example.org/debian")
    if url.username is not None or url.password is not None or "@" in url.netloc:
        raise ValueError(f"{value!r} carries credentials; a mirror URL has none (secrets never go in the inventory)")
    host = url.hostname or ""
    if not _URL_HOST_RE.fullmatch(host):
        raise ValueError(f"{value!r} has no valid host; expected a host name or IPv4 address, such as "
                         "http://mirror.example.org/debian")
    if port == 0:
        raise ValueError(f"{value!r}: port 0; expected a port 1-65535")
    if url.query or url.fragment or "?" in value or "#" in value:
        raise ValueError(f"{value!r} has a query or fragment; expected a base URL such as http://mirror.example.org/debian")
    path = url.path.rstrip("/")
    if not path or not _URL_PATH_RE.fullmatch(path):
        raise ValueError(f"{value!r} has no path; expected the archive's directory, such as "
                         "http://mirror.example.org/debian (its security archive is <mirror>-security)")
    return value


def check_storage_dir(value: str) -> str:
    if control_character(value) is not None:
        return check_text(value)
    if not value.startswith("/"):
        raise ValueError(f"{value!r} is not an absolute path; expected a directory under "
                         f"{' or '.join(STORAGE_ROOTS)}, such as /var/lib/orthanc/db")
    if not _PATH_RE.fullmatch(value):
        raise ValueError(f"{value!r} has characters other than letters, digits, '.', '_', '-' and '/'")
    if posixpath.normpath(value) != value or "//" in value or ".." in value.split("/"):
        raise ValueError(f"{value!r} is not a normal path; write it as {posixpath.normpath(value)!r} "
                         "(no '..', '.', '//' or trailing '/')")
    if not any(value.startswith(root + "/") for root in STORAGE_ROOTS):
        raise ValueError(f"{value!r} is not under {' or '.join(r + '/' for r in STORAGE_ROOTS)}; the deploy gives "
                         "Orthanc's storage to the orthanc user, so it must be a directory of its own there, "
                         "such as /var/lib/orthanc/db or /srv/orthanc")
    return value


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{value!r} is not a finite number; expected megabits per second from 0.1 to 100000 "
                         "(leave it out for no cap)")
    return value


def _strict_hospital_type(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{value!r} is not a hospital type; expected the number 1, 2 or 3 (without quotes)")
    return value


def _strict_schema(value: Any) -> Any:
    if isinstance(value, bool) or value != SCHEMA_VERSION or not isinstance(value, int):
        raise ValueError(f"{value!r} is not a schema version; expected {SCHEMA_VERSION}")
    return value


AET = Annotated[str, AfterValidator(check_aet)]
Code = Annotated[str, AfterValidator(check_code)]
HostName = Annotated[str, AfterValidator(check_hostname)]
Slug = Annotated[str, AfterValidator(check_slug)]
IPv4 = Annotated[str, AfterValidator(check_ipv4)]
Network = Annotated[str, AfterValidator(check_network)]
Window = Annotated[str, AfterValidator(check_window)]
Text = Annotated[str, AfterValidator(check_text)]
#: integers are strict: YAML's true is not 1, "443" and 443.0 are not 443
Port = Annotated[int, Field(strict=True, ge=1, le=65535)]
Flag = Annotated[bool, Field(strict=True)]


def Int(default: int, ge: int, le: int):  # noqa: N802 - a Field factory read like a type
    return Field(default, strict=True, ge=ge, le=le)

#: keys that would carry a secret; they are refused anywhere in the inventory
SECRET_KEYS = frozenset({"password", "passwd", "secret", "private_key", "key", "token"})


def _no_controls(value: Any, where: str = "") -> None:
    if isinstance(value, str):
        c = control_character(value)
        if c is not None:
            raise ValueError(
                f"{value!r}{where} contains the control character {c!r} (U+{ord(c):04X}); expected text on "
                "one line without control characters (no newlines, tabs or escapes)")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _no_controls(v, f" (item {i})")
    elif isinstance(value, dict):
        for k, v in value.items():
            _no_controls(k, " (a key)")
            _no_controls(v, f" (at {k!r})")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False, str_strip_whitespace=False)

    @field_validator("*", mode="after")
    @classmethod
    def _no_control_characters(cls, value: Any) -> Any:
        """No inventory string carries a control character: titles, names,
        phones and codes reach JSON, nftables, nginx and apt files, and a
        newline there starts a new line of configuration."""
        _no_controls(value)
        return value


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
    warning_percent: int = Int(80, ge=1, le=99)
    critical_percent: int = Int(90, ge=2, le=100)

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
    #: (0.1 to 100000: the pacer waits size/bandwidth, and 1e-300 overflows it; .inf is not JSON)
    bandwidth_mbit: Annotated[float, BeforeValidator(_finite),
                              Field(strict=True, allow_inf_nan=False, ge=0.1, le=100_000)] | None = None
    #: a study must be delivered within this many hours of becoming ready
    deadline_hours: int = Int(24, ge=1, le=24 * 30)
    #: gateways: days to keep a study after its delivery was verified
    retention_days: int = Int(7, ge=0, le=3650)


#: the transfer package's rules (plugins/kontur_plugins/transfer/rules.py has their meaning)
TransferRule = Literal["original_quality", "patient_id", "study_uid", "patient_name", "birth_date", "sex",
                       "physician", "procedure", "report"]
#: DICOM keyword paths (Keyword/Keyword through sequences) where the rules look
AttributePath = Annotated[str, AfterValidator(check_attribute_path)]


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
    rules: dict[TransferRule, Flag] = Field(default_factory=dict)
    physician_code: list[AttributePath] | None = None
    physician_name: list[AttributePath] | None = None
    procedure_code: list[AttributePath] | None = None


class ResearchSelect(Strict):
    """Which studies a research feed copies: every key given must hold; within a key, any value."""
    hospitals: list[Slug] = Field(default_factory=list)
    modalities: list[Annotated[str, Field(pattern=r"^[A-Z]{2,16}$")]] = Field(default_factory=list)
    body_parts: list[Annotated[str, Field(pattern=r"^[A-Z0-9_ ]{1,16}$")]] = Field(default_factory=list)
    descriptions: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(default_factory=list)
    procedure_codes: list[Annotated[str, Field(min_length=1, max_length=16)]] = Field(default_factory=list)
    since: Annotated[str, Field(pattern=r"^\d{8}$")] | None = None
    until: Annotated[str, Field(pattern=r"^\d{8}$")] | None = None
    #: only studies whose report (kontur's HL7 service attaches it) marks pathology
    pathology_only: bool = False


class SafePrivate(Strict):
    tag: Annotated[str, Field(pattern=r"^[0-9A-Fa-f]{4},[0-9A-Fa-f]{4}$")]
    creator: str = Field(min_length=1, max_length=64)


class ResearchProfile(Strict):
    """DICOM PS3.15 Annex E: the Basic profile and these options (names and meaning:
    plugins/kontur_plugins/research/profile.py)."""
    options: list[str] = Field(default_factory=list)
    safe_private: list[SafePrivate] = Field(default_factory=list)
    burned_in: Literal["hold", "cleaned"] = "hold"


class ResearchFeed(Strict):
    destination: HostName
    #: the collection point that exports: the TsAMI unless a LAMI is named
    at: HostName | None = None
    select: ResearchSelect
    profile: ResearchProfile = Field(default_factory=ResearchProfile)


class Research(Strict):
    """Research feeds (issue 16, R9): de-identified copies into the research sandbox."""
    feeds: dict[Slug, ResearchFeed] = Field(default_factory=dict)
    #: issuers of identifiers every hospital records for a person (in Other Patient IDs): a patient
    #: carrying one gets one pseudonym in every hospital
    link_issuers: list[Annotated[str, AfterValidator(check_issuer)]] = Field(default_factory=list)
    #: the roles whose users may re-identify a pseudonym (audited)
    reidentify_roles: list[Slug] = Field(default_factory=list)


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
    studies_per_day: int = Int(0, ge=0, le=100000)
    #: a legacy device that cannot speak DICOM network drops files into a folder (R8)
    legacy_folder: Flag = False
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
    type: Annotated[HospitalType, BeforeValidator(_strict_hospital_type)]
    network: Network | None = None
    node: HostName | None = None
    staff: list[Person] = Field(default_factory=list)
    mis: Mis | None = None
    replication: Replication = Field(default_factory=Replication)
    modalities: list[Modality] = Field(default_factory=list)
    #: a mobile unit's link comes and goes (R10)
    intermittent_link: Flag = False
    #: Issuer of Patient ID (0010,0021) stamped at ingest on what this hospital's
    #: devices send; default "<region code>-<HOSPITAL KEY>" (issue 10)
    patient_id_issuer: Annotated[str, AfterValidator(check_issuer)] | None = None
    #: the transfer package: enforce (a failing study is quarantined here) or
    #: warn (it goes, and the findings are recorded).  warn by default: a region
    #: sees what its devices send before it turns enforce on, hospital by hospital
    validation: Literal["enforce", "warn"] = "warn"
    #: per-hospital overrides of the region's rules
    transfer_rules: dict[TransferRule, Flag] = Field(default_factory=dict)


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
    #: strictly below one of STORAGE_ROOTS, normalised
    storage_dir: Annotated[str, AfterValidator(check_storage_dir)] = "/var/lib/orthanc/db"


class Permissions(Strict):
    view: Flag = True
    download: Flag = False
    upload: Flag = False
    delete: Flag = False
    admin: Flag = False


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
    code: Annotated[str, AfterValidator(check_region_code)]
    timezone: str = "Europe/Moscow"
    secure_network: Network
    admin_networks: list[Network] = Field(default_factory=list)
    #: base URL of the region's Debian mirror (a closed network has its own)
    #: (a plain http/https URL with a host and a path: it is written into every node's apt source)
    package_mirror: Annotated[str, AfterValidator(check_mirror)] | None = None
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
    stable_age: int = Int(60, ge=5, le=3600)


class Centre(Strict):
    title: str = Field(min_length=1)
    staff: list[Person] = Field(default_factory=list)


class Region(Strict):
    kontur: Annotated[Literal[1], BeforeValidator(_strict_schema)] = SCHEMA_VERSION
    region: RegionInfo
    centre: Centre
    defaults: Defaults = Field(default_factory=Defaults)
    nodes: dict[HostName, Node]
    hospitals: dict[Slug, Hospital] = Field(default_factory=dict)
    transfer: TransferPackage = Field(default_factory=TransferPackage)
    research: Research = Field(default_factory=Research)
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

    def research_feeds_at(self, node: str) -> dict[str, "ResearchFeed"]:
        """The research feeds ``node`` exports (the TsAMI's unless a feed names another)."""
        tsami = next(iter(self.nodes_by_role(Role.TSAMI)), None)
        return {k: f for k, f in self.research.feeds.items() if (f.at or tsami) == node}

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
