# SPDX-License-Identifier: AGPL-3.0-or-later
"""Which devices an order is scheduled on, and the worklist item each gets.
Pure: a :class:`orders.Request` and the node's hospitals (from the policy
the deploy renders out of the inventory) in, items out or
:class:`orders.Reject`.

Most MIS orders name only the modality type (OBR-24) and the ordering
department: such an order is scheduled on every modality of that type at the
ordering hospital, which is recognised by MSH-4 (the facility the inventory
declares for its MIS).  An order naming a device (IPC-9 AE title, IPC-7
station name) goes to that device only, and it must be one of the hospital's.
"""
from __future__ import annotations

import hashlib
import uuid
from dataclasses import asdict, dataclass, field

from .orders import Order, Patient, Reject, Request


@dataclass(frozen=True)
class Device:
    aet: str
    modality: str
    station_names: tuple[str, ...] = ()
    host: str | None = None              # its address (the MPPS SCP checks the caller's)


@dataclass(frozen=True)
class Hospital:
    slug: str
    facilities: tuple[str, ...]          # MSH-4 values its MIS sends
    devices: tuple[Device, ...]
    issuer: str = ""                     # Issuer of Patient ID of its patients (when PID-3.4 names none)
    title: str = ""                      # its name (the report's institution)
    #: coded findings (OBX CE/CWE codes) its MIS marks pathology with, besides OBX-8's flags
    pathology_codes: frozenset = frozenset()


@dataclass(frozen=True)
class Site:
    """What the node knows: its hospitals (a gateway may serve one, a LAMI its own)
    and the regional classifier (code -> name; empty: not checked)."""
    hospitals: tuple[Hospital, ...]
    classifier: dict = field(default_factory=dict)
    classifier_version: str = ""

    @classmethod
    def from_policy(cls, data: dict) -> Site:
        hospitals = tuple(
            Hospital(h["hospital"], tuple(str(f) for f in h.get("facilities", [])),
                     tuple(Device(d["aet"], d["modality"], tuple(d.get("station_names", [])), d.get("host"))
                           for d in h.get("devices", [])), str(h.get("issuer") or ""), str(h.get("title") or ""),
                     frozenset(str(c) for c in h.get("pathology_codes") or ()))
            for h in data.get("hospitals", []))
        return cls(hospitals, dict(data.get("classifier") or {}), str(data.get("classifier_version") or ""))

    def hospital(self, facility: str) -> Hospital:
        for h in self.hospitals:
            if facility in h.facilities:
                return h
        known = ", ".join(repr(f) for h in self.hospitals for f in h.facilities) or "none"
        raise Reject("AR", 204, f"MSH-4 (Sending Facility) {facility or '(empty)'!r} is not a hospital this "
                                f"node serves; expected one of {known}", "MSH^1^4")


def devices_for(order: Order, hospital: Hospital) -> list[Device]:
    if order.device_aet:
        hit = [d for d in hospital.devices if d.aet == order.device_aet]
        if not hit:
            raise Reject("AE", 204, f"order {order.accession}: device {order.device_aet!r} (IPC-9) is not a "
                                    f"modality of {hospital.slug}; expected one of "
                                    + ", ".join(d.aet for d in hospital.devices), "IPC^1^9")
        return hit
    if order.station_name:
        hit = [d for d in hospital.devices if order.station_name in d.station_names or order.station_name == d.aet]
        if not hit:
            raise Reject("AE", 204, f"order {order.accession}: station {order.station_name!r} (IPC-7) is not "
                                    f"declared for any modality of {hospital.slug}", "IPC^1^7")
        return hit
    if not order.modality:
        raise Reject("AE", 101, f"order {order.accession} names neither a device (IPC-9, IPC-7) nor a modality "
                                "type (OBR-24, IPC-5)", "OBR^1^24")
    hit = [d for d in hospital.devices if d.modality == order.modality]
    if not hit:
        kinds = sorted({d.modality for d in hospital.devices})
        raise Reject("AE", 204, f"order {order.accession}: {hospital.slug} has no {order.modality} modality; "
                                f"it has {', '.join(kinds) or 'none'}", "OBR^1^24")
    return hit


def check_procedure(order: Order, site: Site) -> Order:
    """The procedure must be the regional classifier's; a missing name is taken from it."""
    if not site.classifier or order.control not in ("new", "change"):
        return order
    name = site.classifier.get(order.procedure_code)
    if name is None:
        raise Reject("AE", 103, f"order {order.accession}: procedure code {order.procedure_code!r} (OBR-4) is "
                                f"not in the regional classifier (version {site.classifier_version or '?'})",
                     "OBR^1^4")
    if not order.procedure_name:
        order.procedure_name = name
    return order


def study_uid(order: Order, facility: str) -> str:
    """The order's Study Instance UID: IPC-3, else one derived from the
    facility and accession number (the same order always gets the same UID)."""
    if order.study_uid:
        return order.study_uid
    digest = hashlib.sha256(f"kontur-order\0{facility}\0{order.accession}".encode()).digest()[:16]
    return f"2.25.{uuid.UUID(bytes=digest).int}"


def item(order: Order, patient: Patient, device: Device, facility: str, issuer: str = "") -> dict:
    """The worklist item's facts (the MWL answer is built from these)."""
    # the inventory's issuer is the region's name for the hospital's patients (the ingest stage
    # stamps it and keys the TsAMI's patients by it); the MIS's assigning authority (PID-3.4) is not
    patient = Patient(**{**asdict(patient), "issuer": issuer or patient.issuer})
    return {
        "accession": order.accession, "aet": device.aet, "modality": device.modality,
        "study_uid": study_uid(order, facility), "requested_procedure_id": order.accession,
        "sps_id": f"{order.accession}-1", "scheduled": order.scheduled,
        "procedure_code": order.procedure_code, "procedure_name": order.procedure_name,
        "procedure_scheme": order.procedure_scheme, "priority": order.priority,
        "department": order.department, "placer": order.placer, "filler": order.filler,
        "patient": asdict(patient),
    }


def plan(req: Request, site: Site) -> tuple[Hospital, list[tuple[Order, list[Device]]]]:
    """For an order message: the hospital and, per order, its devices."""
    hospital = site.hospital(req.facility)
    out = []
    for o in req.orders:
        check_procedure(o, site)
        out.append((o, devices_for(o, hospital) if o.control in ("new", "change") else []))
    return hospital, out
