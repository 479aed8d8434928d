"""What a failed change waits for: the error says (a delay or a commit), the retry policy reads it,
and a commit that changes the object gives it a fresh try at once. Engine errors say which they are."""

from __future__ import annotations

import docker.errors
import pytest
import requests

from gitsync.core.actions import Action, ActionKind, ActionResult, ApplyResult
from gitsync.kinds.run import failure
from gitsync.adapters.engine import Conflict, EngineError, NotFound, _translated
from gitsync.core.errors import Reason
from gitsync.kinds.replicas import GateFailed
from gitsync.core.manifest import load_files
from gitsync.core.models import DesiredState
from gitsync.agent.retries import RetryPolicy


def _desired(image: str) -> DesiredState:
    return load_files({"web.yaml": f"apiVersion: gitsync.io/v1\nkind: Deployment\nmetadata: {{name: web}}\nspec: {{image: '{image}', replicas: 2}}\n".encode()})


REPLACE = Action(ActionKind.REPLACE, "h1", "web", 0, "spec changed", "c0", "t-web-0")
CREATE = Action(ActionKind.CREATE, "h1", "web", 1, "missing", None, "t-web-1")


def _failed(a: Action, exc: Exception) -> ApplyResult:
    return ApplyResult([failure(a, exc, 0.1)])


def test_a_transient_failure_is_tried_again_after_a_delay_that_doubles() -> None:
    policy, desired = RetryPolicy(1.0, 60.0), _desired("web:1")
    policy.remember(_failed(CREATE, EngineError("h1", "connection refused")), desired, 100.0, lambda r: "said once")
    hold = policy.hold(CREATE, desired, 100.5)
    assert hold is not None and hold.why == "said once" and hold.seconds == pytest.approx(0.5)
    assert policy.hold(CREATE, desired, 101.1) is None  # the delay is over: tried
    policy.remember(_failed(CREATE, EngineError("h1", "connection refused")), desired, 101.2, lambda r: "said once")
    hold = policy.hold(CREATE, desired, 102.0)
    assert hold is not None and hold.seconds == pytest.approx(1.1)  # the second wait is twice the first
    policy.remember(ApplyResult([ActionResult(CREATE, True, "created")]), desired, 103.2, lambda r: "")
    assert policy.hold(CREATE, desired, 103.3) is None  # it worked: forgotten


def test_a_stalled_failure_waits_for_a_commit_that_changes_its_object_and_no_longer() -> None:
    policy, bad = RetryPolicy(1.0, 60.0), _desired("web:2")
    policy.remember(_failed(REPLACE, GateFailed("web: replica 0 on h1 failed its health check")), bad, 100.0, lambda r: "")
    for later in (101.0, 1_000.0, 100_000.0):  # no delay makes the same spec pass its gate
        hold = policy.hold(REPLACE, bad, later)
        assert hold is not None and hold.seconds is None and "failed its health check" in hold.why
    assert policy.hold(CREATE, bad, 101.0) is None  # a replica that died is still replaced meanwhile
    fixed = _desired("web:3")
    assert policy.hold(REPLACE, fixed, 101.0) is None
    policy.remember(ApplyResult(), fixed, 101.0, lambda r: "")  # the commit's sync forgets the old spec's failure
    assert policy.hold(REPLACE, bad, 102.0) is None


def test_a_commit_that_changes_the_object_cuts_a_delay_short() -> None:
    policy = RetryPolicy(1.0, 60.0)
    policy.remember(_failed(CREATE, NotFound("h1", "No such image: web:1")), _desired("web:1"), 100.0, lambda r: r.message)
    assert policy.hold(CREATE, _desired("web:1"), 100.2) is not None
    assert policy.hold(CREATE, _desired("web:1.0.1"), 100.2) is None


def _api_error(status: int, text: str) -> docker.errors.APIError:
    response = requests.Response()
    response.status_code = status
    return docker.errors.APIError(text, response, explanation=text)


@pytest.mark.parametrize(("raised", "kind", "reason", "transient"), [
    (requests.exceptions.ConnectionError("Connection refused"), EngineError, Reason.HOST_UNREACHABLE, True),
    (_api_error(500, "driver failed programming external connectivity"), EngineError, Reason.APPLY_FAILED, True),
    (_api_error(400, "invalid reference format"), EngineError, Reason.APPLY_FAILED, False),
    (_api_error(409, "Conflict. The container name is already in use"), Conflict, Reason.APPLY_FAILED, True),
    (docker.errors.ImageNotFound("No such image: web:9"), NotFound, Reason.APPLY_FAILED, True),
])
def test_engine_errors_say_whether_the_host_was_reached_and_whether_a_retry_may_work(
    raised: Exception, kind: type, reason: Reason, transient: bool,
) -> None:
    with pytest.raises(kind) as got, _translated("h1"):
        raise raised
    assert got.value.reason == reason and got.value.transient is transient
    assert failure(CREATE, got.value).transient is transient


@pytest.mark.parametrize(("stderr", "says", "transient"), [
    ("stderr: 'fatal: unable to access 'https://git.example/ops.git/': Could not resolve host: git.example'", "unable to connect (host not found)", True),
    ("stderr: 'ssh: connect to host git.example port 22: Connection refused\nfatal: Could not read from remote repository.'", "unable to connect (connection refused)", True),
    ("stderr: 'remote: HTTP Basic: Access denied\nfatal: Authentication failed for 'https://git.example/ops.git/''", "authentication to", False),
    ("stderr: 'Host key verification failed.\nfatal: Could not read from remote repository.'", "ssh host key", False),
    ("stderr: 'fatal: couldn't find remote ref refs/heads/mian'", "branch 'main' does not exist", False),
    ("stderr: 'fatal: the remote end hung up unexpectedly'", "the remote end hung up unexpectedly", True),
])
def test_git_failures_say_what_happened_and_whether_waiting_helps(stderr: str, says: str, transient: bool) -> None:
    from gitsync.core.config import SourceSettings
    from gitsync.adapters.source import _classify

    err = _classify(stderr, SourceSettings(url="https://git.example/ops.git", branch="main"))
    assert says in err.message and err.transient is transient and err.reason == Reason.FETCH_FAILED


def test_a_refused_removal_of_an_object_gone_from_git_waits_a_delay_not_for_a_commit() -> None:
    policy, empty = RetryPolicy(1.0, 60.0), load_files({})
    remove = Action(ActionKind.REMOVE, "h1", "old", 0, "not in Git any more", "c9", "t-old-0")
    policy.remember(_failed(remove, EngineError("h1", "invalid request", reached=True, transient=False)), empty, 100.0, lambda r: "refused")
    hold = policy.hold(remove, empty, 100.5)
    assert hold is not None and hold.seconds == pytest.approx(0.5)  # no commit brings it back into Git: never a hot loop either
    assert policy.hold(remove, empty, 101.1) is None
