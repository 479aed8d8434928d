"""Notifications through the real Apprise, to a JSON webhook catcher of the test's own: each
condition told once (and its end once), a slow or refusing service never delays the caller, secrets
never in a message, `gitsync notify --test`, and the configuration checked."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from gitsync.agent import alerts as alerts_mod
from gitsync.core import config as config_mod
from gitsync.core.actions import ApplyResult
from gitsync.core.triggers import Cause, Trigger
from gitsync.agent.alerts import Alerts
from gitsync.core.errors import ConfigError, Reason
from gitsync.core.live import Health
from gitsync.core.redact import Redactor
from gitsync.reconcile import Outcome
from tests.catcher import Catcher, refusing_url
from tests.conftest import cli
from tests.integration.test_agent import wait_for

ALL = frozenset(config_mod.NOTIFY_EVENTS)


def result(outcome: Outcome, message: str, commit: str = "a" * 40, reason: Reason | None = None, rollbacks: list[str] | None = None,
           deployments: dict | None = None) -> SimpleNamespace:
    applied = ApplyResult()
    applied.rollbacks = rollbacks or []
    return SimpleNamespace(outcome=outcome, message=message, commit=commit, revision=f"main@sha1:{commit}", reason=reason, applied=applied,
                           deployments=deployments or {}, services={})


def test_each_condition_is_told_once_and_its_end_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(alerts_mod, "DEGRADED_AFTER", 0.0)
    catcher = Catcher()
    counted: list[str] = []
    a = Alerts("prod", (config_mod.NotifySettings(catcher.url, on=ALL),), Redactor({"TOKEN": "tok-secret-123"}), counted.append)
    try:
        invalid = Reason.MANIFEST_INVALID
        a.sync_done(result(Outcome.FAILURE, "apps/web.yaml:3: spec.image: is required", reason=invalid), "http://gitsync/syncs/1")
        a.sync_done(result(Outcome.FAILURE, "apps/web.yaml:3: spec.image: is required", reason=invalid))  # a heal pass: the same condition
        a.sync_done(result(Outcome.FAILURE, "apps/web.yaml:3: spec.image: is required (and 1 more)", reason=invalid))  # worded anew: the same
        a.sync_done(result(Outcome.FAILURE, "web: replica 0 create failed on h1: tok-secret-123 refused", reason=Reason.APPLY_FAILED))  # told
        a.sync_done(result(Outcome.ERROR, "host h2 unreachable; 1/1 converged elsewhere", reason=Reason.HOST_UNREACHABLE))  # a host's own event
        a.sync_done(result(Outcome.SUCCESS, "1/1 deployments converged"))
        a.sync_done(result(Outcome.SUCCESS, "1/1 deployments converged"))
        a.host_changed(Trigger(Cause.HOST, "h2", "down"))
        a.host_changed(Trigger(Cause.HOST, "h2", "down"))
        a.host_changed(Trigger(Cause.HOST, "h2", "back"))
        a.sync_done(result(Outcome.SUCCESS, "converged; rolled back 1 replica(s)", rollbacks=["web: replica 0 on h1 rolled back to web:1"]))
        sick = {"web": SimpleNamespace(health=Health.DEGRADED, message="1 of 2 ready")}
        a.sync_done(result(Outcome.SUCCESS, "ok", deployments=sick))
        a.sync_done(result(Outcome.SUCCESS, "ok", deployments=sick))
        a.sync_done(result(Outcome.SUCCESS, "ok", deployments={"web": SimpleNamespace(health=Health.HEALTHY, message="2 of 2 ready")}))
        a.sync_done(result(Outcome.FAILURE, "not signed by a trusted key: the commit is not signed", reason=Reason.UNVERIFIED))
        wait_for(lambda: len(catcher.bodies) >= 9, 10)
        time.sleep(0.3)
        titles = catcher.titles()
        assert titles == [
            "gitsync prod: sync of aaaaaaaaaaaa failed", "gitsync prod: sync of aaaaaaaaaaaa failed", "gitsync prod: syncing again",
            "gitsync prod: host h2 is down", "gitsync prod: host h2 is back", "gitsync prod: rolled back at aaaaaaaaaaaa",
            "gitsync prod: deployment web degraded", "gitsync prod: deployment web healthy again", "gitsync prod: sync of aaaaaaaaaaaa failed",
        ][:len(titles)] and len(titles) == 9, titles
        assert "http://gitsync/syncs/1" in catcher.bodies[0]["message"] and catcher.bodies[0]["type"] == "failure"
        assert "${TOKEN} refused" in catcher.bodies[1]["message"] and "tok-secret-123" not in str(catcher.bodies)
        assert counted.count("sent") == 9
    finally:
        catcher.close()


def test_a_slow_or_refusing_service_never_delays_the_caller_and_is_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(alerts_mod, "SEND_TIMEOUT", 2.0)
    slow = Catcher(delay=30)
    counted: list[str] = []
    targets = (config_mod.NotifySettings(slow.url), config_mod.NotifySettings(refusing_url()))
    a = Alerts("prod", targets, counted=counted.append)
    try:
        t = time.monotonic()
        for i in range(5):
            a.sync_done(result(Outcome.FAILURE, f"reason {'abcdefghij'[i]}"))
        assert time.monotonic() - t < 0.5
        wait_for(lambda: counted.count("failed") >= 2, 15)
    finally:
        slow.close()


def test_notify_test_sends_to_every_target_and_says_which_failed(tmp_path) -> None:  # type: ignore[no-untyped-def]
    catcher = Catcher()
    try:
        cfg = tmp_path / "gitsync.yaml"
        cfg.write_text(f"name: t\nnotify:\n  - {{url: '{catcher.url}', on: [failure]}}\n  - {{urlEnv: NOPE_URL}}\n")
        r = cli("notify", "--test", "-c", str(cfg))
        assert r.code == 1 and "notify[0] (failure): sent" in r.out and "notify[1] (failure, recovery): failed: $NOPE_URL is not set" in r.out, r.out
        assert catcher.titles() == ["gitsync t: test"]
    finally:
        catcher.close()


def test_notify_targets_are_checked_when_the_configuration_is_read() -> None:
    for bad, said in [
        ("notify: [{url: 'json://x', urlEnv: X}]", "give either url"),
        ("notify: [{url: 'nosuchscheme://x'}]", "is not a URL Apprise knows"),
        ("notify: [{url: 'json://x', on: [failure, birthday]}]", "must be a list of events from failure, recovery"),
        ("notify: {url: 'json://x'}", "must be a list of targets"),
    ]:
        with pytest.raises(ConfigError, match=said):
            config_mod.parse(f"name: t\n{bad}\n", "g.yaml")
    got = config_mod.parse("name: t\nnotify: [{urlEnv: SLACK_URL, on: [failure, host-down], remind: 4h}]\n", "g.yaml").notify
    assert got == (config_mod.NotifySettings(None, "SLACK_URL", frozenset({"failure", "host-down"}), 4 * 3600.0),)
