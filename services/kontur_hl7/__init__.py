# SPDX-License-Identifier: AGPL-3.0-or-later
"""kontur's HL7 integration service on LAMIs and gateways (issue 11): orders
from the hospital's MIS over MLLP become Modality Worklist items.

Standard library and Debian's python3-hl7 only.  Pure modules: ``codec``
(bytes -> text by MSH-18), ``orders`` (a parsed message -> what to do),
``ack`` (the answer); glue: ``store`` (sqlite3, durable), ``server`` (the
MLLP listener and the unit's entry point).
"""
