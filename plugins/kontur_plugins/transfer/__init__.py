# SPDX-License-Identifier: AGPL-3.0-or-later
"""The transfer package (issue 10, R3): what a study must carry before it
leaves a hospital -- the received-instance stage (text repair, the hospital's
Issuer of Patient ID) and, on the way out, the package's validation."""
