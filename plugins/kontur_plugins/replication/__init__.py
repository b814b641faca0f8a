# SPDX-License-Identifier: AGPL-3.0-or-later
"""Hybrid replication LAMI/gateway -> TsAMI (issue 5).

received/stable study -> gate -> policy -> durable outbox -> sender -> verifier

Modules: ``config`` (the policy file), ``windows`` (transfer windows in the
region's time zone), ``backoff``, ``pacing`` (bandwidth cap), ``outbox``
(sqlite3 state), ``decisions`` (what the policy selects), ``transport`` (the
upstream's REST API over HTTP(S)), ``local`` (this node's Orthanc, through an
injected REST caller), ``reconcile`` (/changes and the full pass), ``engine``
(threads and the send/verify loop), ``metrics`` and ``api`` (REST routes).
"""
