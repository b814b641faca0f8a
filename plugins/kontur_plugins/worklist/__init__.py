# SPDX-License-Identifier: AGPL-3.0-or-later
"""The Modality Worklist answered by Orthanc's own DICOM server (issue 11)."""
