"""A device's MPPS messages (pynetdicom as the SCU), run as its own process:

    python -m kontur.testing.mpps_scu AET CALLED HOST PORT create ACCESSION STATUS [SOP] [--bind ADDR]
    python -m kontur.testing.mpps_scu AET CALLED HOST PORT set SOP STATUS

Prints ``refused`` (no association) or ``0xSTATUS SOP``.  A process of its
own: pynetdicom's association threads must not share an interpreter that
gevent has monkey-patched (pyinfra's CLI does so when the deploy tests import
it), and the lab runs it inside a device's network namespace.
"""
from __future__ import annotations

import argparse
import subprocess
import sys


def main(argv: list[str] | None = None) -> int:
    from pydicom.dataset import Dataset
    from pydicom.uid import generate_uid
    from pynetdicom import AE
    from pynetdicom.sop_class import ModalityPerformedProcedureStep as MPPS

    ap = argparse.ArgumentParser()
    ap.add_argument("aet")
    ap.add_argument("called")
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("action", choices=["create", "set"])
    ap.add_argument("args", nargs="+")
    ap.add_argument("--bind", default="0.0.0.0")
    a = ap.parse_args(argv)
    ae = AE(ae_title=a.aet)
    ae.add_requested_context(MPPS)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    assoc = ae.associate(a.host, a.port, ae_title=a.called, bind_address=(a.bind, 0))
    if not assoc.is_established:
        print("refused")
        return 0
    try:
        if a.action == "create":
            accession, status = a.args[0], a.args[1]
            sop = a.args[2] if len(a.args) > 2 else generate_uid()
            ds = Dataset()
            ds.PerformedProcedureStepStatus = status
            ds.Modality, ds.PerformedStationAETitle, ds.PerformedProcedureStepID = "CT", a.aet, "PPS1"
            ds.PerformedProcedureStepStartDate, ds.PerformedProcedureStepStartTime = "20261201", "130000"
            ssa = Dataset()
            ssa.AccessionNumber = accession
            ssa.StudyInstanceUID = generate_uid()
            ds.ScheduledStepAttributesSequence = [ssa]
            st, _ = assoc.send_n_create(ds, MPPS, sop)
        else:
            sop, status = a.args[0], a.args[1]
            mod = Dataset()
            mod.PerformedProcedureStepStatus = status
            mod.PerformedProcedureStepEndDate, mod.PerformedProcedureStepEndTime = "20261201", "131500"
            st, _ = assoc.send_n_set(mod, MPPS, sop)
    finally:
        assoc.release()
    print(f"0x{int(st.Status):04X} {sop}")
    return 0


def run(*args: str, prefix: list[str] | None = None, timeout: float = 120) -> tuple[int | None, str]:
    """Run it (``prefix``: e.g. ``ip netns exec NS``); (status or None if refused, SOP Instance UID)."""
    p = subprocess.run([*(prefix or []), sys.executable, "-m", "kontur.testing.mpps_scu", *args],
                       capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"mpps_scu {' '.join(args)}: exit {p.returncode}: {p.stderr[-800:]}")
    out = p.stdout.strip().splitlines()[-1]
    if out == "refused":
        return None, ""
    status, sop = out.split()
    return int(status, 16), sop


if __name__ == "__main__":
    sys.exit(main())
