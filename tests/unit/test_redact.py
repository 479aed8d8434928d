"""Values of the agent's environment are never shown: the Redactor and the places that use it
(the command line, logs, the sync history, commit statuses), and previews' stand-ins (issue 20, item 1)."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest

from gitsync.core import config as config_mod
from gitsync.core.config import placeholder
from gitsync.core.errors import ConfigError
from gitsync.agent.history import History
from gitsync.core.manifest import load_files
from gitsync.core.redact import Masking, MaskingFilter, Redactor
from gitsync.adapters.status import CommitStatus, Notifier, State
from tests.conftest import cli

SECRET = 'pa"ss<w>rd 42&'


def test_a_value_is_masked_by_its_name_in_every_spelling_and_json_stays_json() -> None:
    r = Redactor({"PW": SECRET, "PORT": "8443"})
    text = f"raw {SECRET}; json {json.dumps(SECRET)}; html {'pa&quot;ss&lt;w&gt;rd 42&amp;'}; url pa%22ss%3Cw%3Erd%2042%26; port 8443"
    assert r.text(text) == 'raw ${PW}; json "${PW}"; html ${PW}; url ${PW}; port ${PORT}'
    doc = r.data({"image": f"web:{SECRET}", SECRET: [8443, 8443.0, True, None, 443], "ports": {"hostPort": 8443}})
    assert doc == {"image": "web:${PW}", "${PW}": ["${PORT}", 8443.0, True, None, 443], "ports": {"hostPort": "${PORT}"}}
    assert json.loads(json.dumps(doc)) == doc
    assert not Redactor() and Redactor().text(SECRET) == SECRET
    both = Redactor({"A": "alpha-1"}) | Redactor({"A": "alpha-2"})  # a name whose value changed: both stay masked
    assert both.text("alpha-1 alpha-2") == "${A} ${A}"


def test_a_value_too_short_to_mask_is_refused_when_the_configuration_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIN", "123")
    with pytest.raises(ConfigError) as err:
        config_mod.parse("compose: {variablesFromEnvironment: [PIN]}")
    assert "$PIN is shorter than 4 characters" in str(err.value) and "123" not in str(err.value)
    monkeypatch.setenv("PIN", "1234")
    assert config_mod.parse("compose: {variablesFromEnvironment: [PIN]}").redactor.text("pin 1234") == "pin ${PIN}"


def test_previews_see_stand_ins_that_fit_where_values_go_and_show_as_the_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAG", "v1.4.2-secret")
    cfg = config_mod.parse("compose: {variablesFromEnvironment: [TAG]}")
    text = b"services:\n  web:\n    image: web:${TAG}\n    hostname: h-${TAG}\n    working_dir: /srv/${TAG}\n"
    real = load_files({"compose.yaml": text}, variables=cfg.compose.resolved()).deployment("web")
    seen = load_files({"compose.yaml": text}, variables=cfg.compose.resolved(placeholders=True)).deployment("web")
    assert real is not None and real.image == "web:v1.4.2-secret"
    assert seen is not None and seen.image == f"web:{placeholder('TAG')}" and "v1.4.2" not in repr(seen)
    assert cfg.redactor.text(f"{seen.image} {real.image}") == "web:${TAG} web:${TAG}"
    assert placeholder("TAG") != placeholder("Tag") and placeholder("A_B").startswith("env-a-b-")


def test_the_command_line_names_the_variable_in_problems(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DB_HOST", "db.internal.s3cret")
    (tmp_path / "repo").mkdir()
    (tmp_path / "gitsync.yaml").write_text("compose: {variablesFromEnvironment: [DB_HOST]}\n")
    said = []
    for line, message in (("ports: ['${DB_HOST}']", "'${DB_HOST}' is not a port"), ("user: '${MISSING:?ask ${DB_HOST} for it}'", "required variable MISSING is missing a value: ask ${DB_HOST} for it")):
        (tmp_path / "repo" / "compose.yaml").write_text(f"services:\n  web:\n    image: web:1\n    {line}\n")
        r = cli("validate", str(tmp_path / "repo"), "-c", str(tmp_path / "gitsync.yaml"))
        assert r.code == 1 and message in r.err, r.err
        said.append(r.out + r.err)
    assert all("db.internal" not in text for text in said)


def test_logs_tracebacks_history_and_statuses_are_masked(tmp_path: Path) -> None:
    redactor = Redactor({"TOKEN": "tok-abcdef-123"})
    masking = Masking()
    masking.use(redactor)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(MaskingFilter(masking))
    log = logging.getLogger("gitsync.test-redact")
    log.addHandler(handler)
    try:
        try:
            raise ValueError("bad value tok-abcdef-123")
        except ValueError:
            log.exception("while reading %s", "tok-abcdef-123")
    finally:
        log.removeHandler(handler)
    assert "tok-abcdef" not in stream.getvalue() and "while reading ${TOKEN}" in stream.getvalue() and "ValueError: bad value ${TOKEN}" in stream.getvalue()

    history = History(str(tmp_path), "a", redactor=redactor)
    sid = history.start("push")
    history.update(sid, message="image web:tok-abcdef-123", detail={"problems": ["x tok-abcdef-123"], "port": 1})
    record = history.get(sid)
    assert record is not None and record.message == "image web:${TOKEN}" and "tok-abcdef" not in json.dumps(record.to_json())
    history.close()
    assert all(b"tok-abcdef" not in p.read_bytes() for p in tmp_path.glob("history.db*"))

    class Provider:
        kind = "fake"

        def __init__(self) -> None:
            self.posted: list[CommitStatus] = []

        def post(self, status: CommitStatus) -> None:
            self.posted.append(status)

        def latest(self, sha: str, context: str) -> None:
            return None

    provider = Provider()
    notifier = Notifier([provider], redactor=redactor)  # type: ignore[list-item]
    notifier.send(CommitStatus("a" * 40, State.FAILURE, "gitsync/a", "compose.yaml:3: 'tok-abcdef-123' is not a port"))
    notifier.flush(5)
    notifier.close()
    assert [p.description for p in provider.posted] == ["compose.yaml:3: '${TOKEN}' is not a port"]
