"""Prometheus metrics, on the agent's own registry (no process-global state)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from ..core.health import DeploymentStatus, ServiceStatus


class Metrics:
    def __init__(self, agent: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.syncs = Counter("gitsync_syncs", "Syncs by result", ["result"], registry=r)
        self.duration = Histogram(
            "gitsync_sync_duration_seconds", "Duration of a sync", registry=r, buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
        )
        self.webhooks = Counter("gitsync_webhook_requests", "Webhook requests by provider and HTTP code", ["provider", "code"], registry=r)
        self.containers = Gauge("gitsync_managed_containers", "Managed containers per host and deployment", ["host", "deployment", "state"], registry=r)
        self.host_up = Gauge("gitsync_host_up", "1 when the host answered the last observation", ["host"], registry=r)
        self.last_success = Gauge("gitsync_last_successful_sync_timestamp_seconds", "Unix time of the last converged sync", registry=r)
        self.revision = Gauge("gitsync_revision_info", "The revision of the last sync (value 1)", ["agent", "revision"], registry=r)
        self.replicas = Gauge("gitsync_deployment_replicas", "Replicas per deployment: desired, running, healthy", ["deployment", "kind"], registry=r)
        self.degraded = Gauge("gitsync_deployment_degraded", "1 when a deployment is not healthy", ["deployment"], registry=r)
        self.endpoints = Gauge("gitsync_service_endpoints", "Endpoints per Service by state: ready, starting, draining, down", ["service", "state"], registry=r)
        self.service_degraded = Gauge("gitsync_service_degraded", "1 when a Service has not every endpoint ready", ["service"], registry=r)
        self.image_updates = Counter("gitsync_image_updates", "Image update rounds: committed, problem, error", ["result"], registry=r)
        self.notifications = Counter("gitsync_notifications", "Notifications by result: sent, failed, dropped", ["result"], registry=r)
        self.agent = agent
        self._revision: str | None = None

    def observed(self, hosts: Mapping[str, Mapping[str, Any]]) -> None:
        """From a runtime's hosts view: each host up or not, our containers there by deployment and state."""
        self.containers.clear()
        for host, o in hosts.items():
            self.host_up.labels(host).set(1 if o["reachable"] else 0)
            counts: dict[tuple[str, str], int] = {}
            for c in o["containers"]:
                key = (c["deployment"] or "", c["state"])
                counts[key] = counts.get(key, 0) + 1
            for (dep, state), n in counts.items():
                self.containers.labels(host, dep, state).set(n)

    def deployments(self, status: Mapping[str, DeploymentStatus]) -> None:
        self.replicas.clear()
        self.degraded.clear()
        for name, s in status.items():
            self.replicas.labels(name, "desired").set(s.desired)
            self.replicas.labels(name, "running").set(s.running)
            self.replicas.labels(name, "healthy").set(s.healthy)
            self.degraded.labels(name).set(0 if str(s.health) == "Healthy" else 1)

    def services(self, status: Mapping[str, ServiceStatus]) -> None:
        self.endpoints.clear()
        self.service_degraded.clear()
        for name, s in status.items():
            for state in ("ready", "starting", "draining", "down"):
                self.endpoints.labels(name, state).set(sum(1 for e in s.endpoints if e.state == state))
            self.service_degraded.labels(name).set(0 if str(s.health) == "Healthy" else 1)

    def set_revision(self, revision: str | None) -> None:
        if revision is None or revision == self._revision:
            return
        if self._revision is not None:
            self.revision.remove(self.agent, self._revision)
        self.revision.labels(self.agent, revision).set(1)
        self._revision = revision

    def render(self) -> bytes:
        return generate_latest(self.registry)
