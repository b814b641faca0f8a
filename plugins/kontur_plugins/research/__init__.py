# SPDX-License-Identifier: AGPL-3.0-or-later
"""The research sandbox's feeds (issue 16, R9): selected studies copied,
de-identified, from the regional collection point to the research node.

    study at the TsAMI -> feed selection -> per instance: burned-in risk?
    -> Orthanc's /anonymize (PS3.15 2021b table E.1-1, top level)
    -> kontur's second pass (pydicom: sequences, UIDs, dates, SR, private tags)
    -> leak scan against the identity it came from -> delivered or held back

Modules: ``profile`` (the feed's PS3.15 options and Orthanc's request),
``pseudonyms`` (keyed pseudonyms, UIDs and date offsets), ``deid`` (the
second pass), ``identity`` (what identifies a patient, and the leak scan),
``feeds`` (the policy file's feeds and their selection), ``keymap`` (the
pseudonym <-> identity map kept at the MIAC), ``export`` (a study through a
feed, over an injected archive).  All pure but ``keymap`` (sqlite3) and
``export`` (calls what it is given); pydicom is Debian's python3-pydicom.
"""
