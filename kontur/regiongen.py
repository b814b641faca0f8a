"""Generate synthetic regions of any size (tests, benchmarks, capacity planning).

The output is ordinary inventory YAML in the same schema as the example,
with its own names, addresses and ports, so code that only works on the
example region is caught.
"""
from __future__ import annotations

import random

MODALITY_MIX = ["CT", "MR", "DX", "US", "MG", "CR", "NM", "ES", "XA"]


def generate_region(hospitals: int = 10, *, gateways: int = 2, seed: int = 7, name: str = "generated",
                    dicom_port: int = 11112, https_port: int = 8443, second_octet: int = 77) -> str:
    """A region with ``hospitals`` type-1 hospitals, ``gateways`` type-2 ones,
    one reference centre, a TsAMI and a research node."""
    if not 0 <= hospitals + gateways <= 254:
        raise ValueError(f"{hospitals + gateways} hospitals; expected at most 254 (one /24 each, "
                         "the reference centre in the last)")
    rnd = random.Random(seed)
    net = f"10.{second_octet}"
    lines = [
        "kontur: 1",
        "region:",
        f"  name: {name}",
        f"  title: Generated region {name}",
        '  code: "99"',
        "  timezone: Asia/Yekaterinburg",
        f"  secure_network: {net}.0.0/16",
        f"  admin_networks: [{net}.0.0/28]",
        "centre:",
        "  title: Regional IT centre",
        "defaults:",
        "  ports:",
        f"    dicom: {dicom_port}",
        "    http: 8042",
        f"    https: {https_port}",
        "  stable_age: 30",
        "nodes:",
        "  central:",
        "    role: tsami",
        f"    address: {net}.0.10",
        "    aet: CENTRAL",
        "  sandbox:",
        "    role: research",
        f"    address: {net}.0.20",
        "    aet: SANDBOX",
    ]
    hosp: list[str] = ["hospitals:"]
    total = hospitals + gateways
    for i in range(1, total + 1):
        is_gw = i > hospitals
        node = f"h{i:02d}-{'gw' if is_gw else 'pacs'}"
        lines += [f"  {node}:", f"    role: {'gateway' if is_gw else 'lami'}", f"    address: {net}.{i}.10",
                  f"    aet: H{i:02d}_{'GW' if is_gw else 'PACS'}", "    upstream: central"]
        policy = "all" if is_gw else rnd.choice(["all", "pathology", "on-demand"])
        hosp += [f"  mo{i:02d}:", f"    title: Hospital {i}", f"    type: {2 if is_gw else 1}",
                 f"    network: {net}.{i}.0/24", f"    node: {node}",
                 "    staff:", f"      - name: Engineer {i}", "        position: engineer",
                 f'        work_phone: "+7 000 {i:03d}"', f'        mobile_phone: "+7 900 {i:03d}"',
                 "    replication:", f"      policy: {policy}"]
        if not is_gw:
            hosp += ["      windows: [\"21:00-06:00\"]", f"      bandwidth_mbit: {rnd.choice([20, 50, 100])}",
                     "    mis:", f"      host: {net}.{i}.5", "      port: 6661"]
        hosp.append("    modalities:")
        for j in range(1, (2 if is_gw else rnd.randint(3, 6)) + 1):
            code = rnd.choice(MODALITY_MIX)
            hosp += [f"      - aet: H{i:02d}_{code}{j}", f"        host: {net}.{i}.{20 + j}",
                     f"        port: {rnd.choice([104, 11112, 4006])}", f"        modality: {code}",
                     f"        studies_per_day: {rnd.randint(10, 80)}"]
    lines += ["  refcentre:", "    role: reference", f"    address: {net}.255.10", "    reads_from: central"]
    hosp += ["  ref:", "    title: Reference centre", "    type: 3", f"    network: {net}.255.0/24",
             "    node: refcentre", "    staff:", "      - name: Head of reference centre",
             "        position: head", '        work_phone: "+7 000 200"', '        mobile_phone: "+7 900 200"']
    tail = ["roles:", "  reader:", "    view: true", "    download: true",
            "users:", "  - login: reader1", "    name: Reader One", "    role: reader", "    hospital: mo01"]
    return "\n".join(lines + hosp + tail) + "\n"
