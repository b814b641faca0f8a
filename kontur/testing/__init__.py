"""Helpers for tests that run real Debian Orthanc processes and DICOM peers on loopback."""
