# SPDX-License-Identifier: AGPL-3.0-or-later
"""pyinfra deploys of kontur, one folder per component (base, firewall,
postgresql, orthanc, nginx), each in install / configure / activate stages.
``deploys/region.py`` is the entry point::

    pyinfra inventory/region.py deploys/region.py

Every deploy reads the node's rendered bundle (``deploys/node.py``); none
adds configuration of its own.
"""
