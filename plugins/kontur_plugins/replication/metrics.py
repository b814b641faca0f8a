# SPDX-License-Identifier: AGPL-3.0-or-later
"""The replication status in Prometheus text format (exposition format 0.0.4)."""
from __future__ import annotations


def _esc(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render(status: dict) -> str:
    labels = f'node="{_esc(status.get("node", ""))}",upstream="{_esc((status.get("upstream") or {}).get("name", ""))}"'
    lines: list[str] = []
    described: set[str] = set()

    def metric(name: str, kind: str, help_: str, value, extra: str = "") -> None:
        if value is None:
            return
        lab = labels + ("," + extra if extra else "")
        if name not in described:
            described.add(name)
            lines.append(f"# HELP {name} {help_}")
            lines.append(f"# TYPE {name} {kind}")
        lines.append(f"{name}{{{lab}}} {float(value):.15g}" if isinstance(value, float) else f"{name}{{{lab}}} {int(value)}")

    enabled = 1 if status.get("enabled") else 0
    metric("kontur_replication_enabled", "gauge", "1 if replication runs on this node", enabled)
    if not enabled:
        return "\n".join(lines) + "\n"
    metric("kontur_replication_queue_depth", "gauge", "Studies waiting to be sent", status["queue_depth"])
    metric("kontur_replication_oldest_pending_age_seconds", "gauge",
           "Age of the oldest study waiting to be sent (0 if none)", float(status["oldest_pending_age_seconds"] or 0.0))
    metric("kontur_replication_in_flight", "gauge", "Studies being sent now", 1 if status.get("in_flight") else 0)
    metric("kontur_replication_delivered", "gauge", "Studies verified delivered", status["delivered"])
    metric("kontur_replication_failed", "gauge", "Queued studies whose last attempt failed", status["failed"])
    metric("kontur_replication_parked", "gauge", "Studies the upstream refused, parked with a reason", status["parked"])
    metric("kontur_replication_held", "gauge", "Studies a gate holds back", status["held"])
    metric("kontur_replication_overdue", "gauge", "Queued studies older than the deadline", status["overdue"])
    metric("kontur_replication_window_open", "gauge", "1 if a transfer window is open now", 1 if status["window_open"] else 0)
    metric("kontur_replication_link_up", "gauge", "0 while the link to the upstream is backing off", 1 if status["link"]["up"] else 0)
    c = status.get("counters", {})
    metric("kontur_replication_deliveries_total", "counter", "Verified deliveries", c.get("deliveries_total", 0))
    metric("kontur_replication_failures_total", "counter", "Failed attempts", c.get("failures_total", 0))
    metric("kontur_replication_instances_sent_total", "counter", "Instances sent upstream", c.get("instances_sent_total", 0))
    metric("kontur_replication_bytes_sent_total", "counter", "DICOM bytes sent upstream", c.get("bytes_sent_total", 0))
    metric("kontur_replication_deleted_instances_total", "counter",
           "Instances deleted here after verified delivery (gateway)", c.get("deleted_instances_total", 0))
    metric("kontur_replication_changes_seq", "gauge", "Last Orthanc change processed", status.get("changes_seq") or 0)
    feed = status.get("feed") or {}
    metric("kontur_replication_feed_lag", "gauge", "Orthanc changes not yet read by the plugin", feed.get("lag"))
    metric("kontur_replication_feed_failures", "gauge",
           "Consecutive failed attempts of the change feed (0 when it runs)", feed.get("failures", 0))
    metric("kontur_replication_feed_resets_total", "counter",
           "Times Orthanc's change log restarted or was cleared under the plugin", feed.get("resets", 0))
    metric("kontur_replication_storage_errors", "gauge",
           "Studies whose files Orthanc's index lists but this node cannot read (storage loss)",
           status.get("storage_errors", 0))
    metric("kontur_replication_divergent", "gauge",
           "Studies of which the upstream holds instances deleted here", status.get("divergent", 0))
    val = status.get("transfer")
    if val:
        for state in ("valid", "incomplete", "quarantined"):
            metric("kontur_transfer_studies", "gauge",
                   "Studies by the transfer package's state (the latest validation of each)",
                   val.get(state, 0), f'state="{state}"')
        metric("kontur_transfer_released", "gauge", "Quarantined studies an operator released", val.get("released", 0))
        metric("kontur_transfer_enforced", "gauge", "1 if a quarantined study is held here (enforce), 0 if it goes (warn)",
               1 if val.get("mode") == "enforce" else 0)
    corr = status.get("corrections") or {}
    for state in ("blocked", "waiting", "pending", "refused"):
        metric("kontur_replication_corrections", "gauge", "Corrections not yet applied upstream, by state",
               corr.get(state, 0), f'state="{state}"')
    fp = status.get("full_pass") or {}
    metric("kontur_replication_full_pass_running", "gauge", "1 while a full pass runs",
           1 if fp.get("state") == "running" else 0)
    if fp.get("state") == "running" and fp.get("total"):
        metric("kontur_replication_full_pass_progress_ratio", "gauge", "Share of the running full pass done",
               float(fp.get("progress") or 0.0))
    done = fp.get("last_completed") or {}
    if done.get("finished_at"):
        metric("kontur_replication_full_pass_last_completed_timestamp_seconds", "gauge",
               "When the last full pass finished (POSIX time)", float(done["finished_at"]))
        st = done.get("stats") or {}
        metric("kontur_replication_full_pass_last_requeued", "gauge",
               "Studies the last full pass queued again", st.get("requeued", 0))
    err = fp.get("last_error") or {}
    metric("kontur_replication_full_pass_error", "gauge", "1 if the full pass stopped on an error it will resume from",
           1 if err and fp.get("state") == "running" else 0)
    if status.get("bandwidth_mbit"):
        metric("kontur_replication_bandwidth_cap_bits_per_second", "gauge", "Bandwidth cap",
               int(status["bandwidth_mbit"] * 1_000_000))
    return "\n".join(lines) + "\n"
