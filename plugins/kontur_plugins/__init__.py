# SPDX-License-Identifier: AGPL-3.0-or-later
"""kontur's Orthanc plugin logic.

Everything under this package is plain Python (standard library only) and
never imports ``orthanc``: the thin glue in ``kontur_entry.py`` is the only
file that does, so all of this is unit-testable without Orthanc.
"""
