"""Image policies: the newest tag a policy allows (semver ranges as npm reads them, a number in the
tag, alphabetical), the marked lines found, and a rewrite that changes the tag and nothing else."""

from __future__ import annotations

import pytest

from gitsync.core import config as config_mod
from gitsync.core.config import ImagePolicy
from gitsync.core.errors import ConfigError
from gitsync.core.images import choose, find_markers, rewrite, split_repository

TAGS = ["1.4.2", "1.4.3", "1.5.0-rc.1", "2.0.0", "latest", "v1.4.10", "main-20261201", "main-20261207", "main-9"]


@pytest.mark.parametrize(("rule", "chosen"), [
    ({"semver": ">=1.4.0 <2.0.0"}, "v1.4.10"),  # 1.4.10 > 1.4.3 (not as text); the rc is not asked for; latest is no version
    ({"semver": ">=1.5.0-rc.0 <2.0.0"}, "1.5.0-rc.1"),  # a range naming a pre-release of 1.5.0 admits 1.5.0's
    ({"semver": "<1.4.3 || >=2.0.0"}, "2.0.0"),
    ({"semver": "^1.4.0"}, "v1.4.10"),  # npm's caret: <2.0.0
    ({"semver": "~1.4.2"}, "v1.4.10"),  # npm's tilde: <1.5.0
    ({"semver": "~1.3.0"}, None),
    ({"semver": ">=3.0.0"}, None),
    ({"regex": r"^main-(?P<ts>\d+)$", "order": "ts"}, "main-20261207"),  # numeric: 20261207 > 9
    ({"alphabetical": "asc"}, "v1.4.10"),
    ({"alphabetical": "desc"}, "1.4.2"),
])
def test_the_newest_tag_the_policy_allows(rule: dict, chosen: str | None) -> None:
    assert choose(ImagePolicy("web", "r.example.com/acme/web", **rule), TAGS) == chosen


def test_marked_lines_change_their_tag_and_nothing_else_in_the_file() -> None:
    text = (
        "# the web tier\n"
        "spec:\n"
        "  image: \"r.example.com/acme/web:1.4.2\"   # {\"$imagepolicy\": \"web\"}\n"
        "  sidecar: r.example.com/acme/web-helper:1.0 # not marked\n"
        "services:\n"
        "  - {image: 'r.example.com/acme/web:1.4.2@sha256:" + "a" * 64 + "'}  #{\"$imagepolicy\":\"web\"}\n"
        "  other: r.example.com/acme/api:7 # {\"$imagepolicy\": \"nope\"}\n"
        "  odd: r.example.com/acme/other:7 # {\"$imagepolicy\": \"web\"}\n"
    )
    policies = {"web": ImagePolicy("web", "r.example.com/acme/web", semver=">=1.0.0")}
    markers, problems = find_markers({"apps/web.yaml": text.encode(), "README.md": text.encode()}, policies)
    assert [(m.file, m.line, m.reference) for m in markers] == [
        ("apps/web.yaml", 3, "r.example.com/acme/web:1.4.2"), ("apps/web.yaml", 6, "r.example.com/acme/web:1.4.2@sha256:" + "a" * 64)]
    assert problems == ["apps/web.yaml:7: the marker names image policy 'nope', which the agent's configuration (images) does not have",
                        "apps/web.yaml:8: marked for web, but the line names no image of r.example.com/acme/web"]
    new = rewrite(text, markers, {"web": "1.4.3"}, {"web": "r.example.com/acme/web"})
    assert new == text.replace("acme/web:1.4.2\"", "acme/web:1.4.3\"").replace("acme/web:1.4.2@sha256:" + "a" * 64, "acme/web:1.4.3")
    assert new.count("\n") == text.count("\n") and "web-helper:1.0" in new


def test_repositories_and_policies_are_checked_when_the_configuration_is_read() -> None:
    assert split_repository("registry.example.com/acme/web") == ("registry.example.com", "acme/web")
    assert split_repository("10.0.0.1:5000/web") == ("10.0.0.1:5000", "web")
    assert split_repository("nginx") == ("registry-1.docker.io", "library/nginx")
    for bad, said in [
        ("images: [{name: web, repository: r.io/web, policy: {semver: '>=1.4 <2'}}]", "'>=1.4' is no comparator"),
        ("images: [{name: web, repository: r.io/web, policy: {semver: '>=1.0.0', alphabetical: asc}}]", "give one of semver"),
        ("images: [{name: web, repository: r.io/web, policy: {regex: '^x-(\\d+)$', order: ts}}]", "'ts' is not a named group"),
        ("images: [{name: web, repository: r.io/web, policy: {alphabetical: up}}]", "must be asc or desc"),
        ("images: [{name: web, repository: r.io/web, policy: {alphabetical: asc}, credentials: {username_env: U}}]", "give both"),
    ]:
        with pytest.raises(ConfigError, match=said):
            config_mod.parse(f"name: t\n{bad}\n", "g.yaml")
    (p,) = config_mod.parse("name: t\nimages: [{name: web, repository: r.io/acme/web, policy: {semver: '>=1.4.0 <2.0.0'}, interval: 1m}]\n", "g.yaml").images
    assert (p.semver, p.interval) == (">=1.4.0 <2.0.0", 60.0)
