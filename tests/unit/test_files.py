"""Files of the repository mounted into replicas (issue 21, item 4): `spec.files` in manifests,
read-only relative bind mounts and `configs:` in compose files; read from the same revision, never
through a link or out of the repository; their content is what a change rolls on."""

from __future__ import annotations

from pathlib import Path

import pytest

from gitsync.core import labels as L
from gitsync.core.errors import ManifestError
from gitsync.core.manifest import load_files, read_folder

NGINX = b"events {}\nhttp { server { listen 80; } }\n"


def manifest(files: str) -> bytes:
    return f"apiVersion: gitsync.io/v1\nkind: Deployment\nmetadata: {{name: web}}\nspec:\n  image: nginx:1\n  files:\n{files}".encode()


def problems(files: dict[str, bytes]) -> list[str]:
    with pytest.raises(ManifestError) as err:
        load_files(files)
    return [str(p) for p in err.value.problems]


def test_a_manifest_mounts_a_file_a_folder_and_inline_text_and_a_change_of_content_changes_the_spec() -> None:
    files = {
        "apps/web.yaml": manifest("    - {source: conf/nginx.conf, mountPath: /etc/nginx/nginx.conf}\n"
                                  "    - {source: ../shared/rules, mountPath: /etc/rules, mode: 0440}\n"
                                  "    - {content: 'hello', mountPath: /srv/hello.txt}\n"),
        "apps/conf/nginx.conf": NGINX,
        "shared/rules/a.rule": b"a\n",
        "shared/rules/sub/b.rule": b"b\n",
    }
    web = load_files(files).deployment("web")
    assert web is not None
    by_path = {f.mount_path: f for f in web.options.files}
    assert by_path["/etc/nginx/nginx.conf"].entries == (("", NGINX, 0o444),) and not by_path["/etc/nginx/nginx.conf"].folder
    assert by_path["/etc/rules"].folder and by_path["/etc/rules"].entries == (("a.rule", b"a\n", 0o440), ("sub/b.rule", b"b\n", 0o440))
    assert by_path["/srv/hello.txt"].entries == (("", b"hello", 0o444),)
    doc = L.spec_document(web)
    assert sorted(m for m, _, _ in doc["files"]) == ["/etc/nginx/nginx.conf", "/etc/rules", "/srv/hello.txt"]
    assert "events" not in L.canonical_spec(web)  # the spec holds the digest, never the content
    labels = L.container_labels("t", web, 0, "r")
    assert sorted(labels[L.FILES].split(",")) == sorted(L.files_volume("t", f.digest) for f in web.options.files)

    changed = load_files({**files, "shared/rules/a.rule": b"a, changed\n"}).deployment("web")
    assert changed is not None and L.spec_hash(changed) != L.spec_hash(web)  # a commit that changes a file rolls the replicas
    same = load_files({**files, "unrelated.txt": b"x"}).deployment("web")
    assert same is not None and L.spec_hash(same) == L.spec_hash(web)


def test_what_a_file_mount_may_not_name_is_a_problem_naming_it(tmp_path: Path) -> None:
    got = problems({
        "apps/web.yaml": manifest("    - {source: ../../etc/passwd, mountPath: /etc/passwd}\n"
                                  "    - {source: missing.conf, mountPath: /a}\n"
                                  "    - {source: conf, content: x, mountPath: /b}\n"
                                  "    - {content: x, mountPath: relative/path}\n"
                                  "    - {content: x, mountPath: /data}\n"
                                  "    - {content: x, mountPath: /data}\n"),
    })
    assert got == [
        "apps/web.yaml:7: spec.files[0].source: '../../etc/passwd' is outside the repository (or the repository itself): name a file or folder in it",
        "apps/web.yaml:8: spec.files[1].source: missing.conf: not in the repository (looked for apps/missing.conf)",
        "apps/web.yaml:9: spec.files[2]: give either source (a file or folder of the repository) or content (the file's text)",
        "apps/web.yaml:10: spec.files[3].mountPath: 'relative/path' must be an absolute path",
        "apps/web.yaml:12: spec.files[5].mountPath: /data is mounted twice",
    ]
    repo = tmp_path / "repo"
    (repo / "apps").mkdir(parents=True)
    (repo / "apps" / "web.yaml").write_bytes(manifest("    - {source: conf, mountPath: /conf}\n    - {source: key, mountPath: /key}\n"))
    (repo / "apps" / "conf").mkdir()
    (repo / "apps" / "conf" / "ok.conf").write_text("ok\n")
    (repo / "apps" / "conf" / "shadow").symlink_to("/etc/shadow")
    (repo / "apps" / "key").symlink_to("/root/.ssh/id_rsa")
    assert problems(read_folder(str(repo))) == [
        "apps/web.yaml:7: spec.files[0].source: conf/shadow: is a symbolic link; gitsync reads only regular files of the repository (commit the file itself)",
        "apps/web.yaml:8: spec.files[1].source: key: is a symbolic link; gitsync reads only regular files of the repository (commit the file itself)",
    ]


def test_compose_read_only_relative_binds_and_configs_are_files_from_the_repository_writable_ones_are_data() -> None:
    text = """\
services:
  web:
    image: nginx:1
    volumes:
      - ./nginx.conf:/etc/nginx/nginx.conf:ro
      - {type: bind, source: ./html, target: /usr/share/nginx/html, read_only: true}
    configs:
      - app_conf
      - {source: motd, target: /etc/motd, mode: "0400"}
configs:
  app_conf: {file: ./app.conf}
  motd: {content: "welcome"}
"""
    files = {"site/compose.yaml": text.encode(), "site/nginx.conf": NGINX, "site/html/index.html": b"<h1>hi</h1>", "site/app.conf": b"a=1\n"}
    web = load_files(files).deployment("web")
    assert web is not None
    got = {f.mount_path: (f.folder, f.entries) for f in web.options.files}
    assert got == {
        "/etc/nginx/nginx.conf": (False, (("", NGINX, 0o444),)),
        "/usr/share/nginx/html": (True, (("index.html", b"<h1>hi</h1>", 0o444),)),
        "/app_conf": (False, (("", b"a=1\n", 0o444),)),
        "/etc/motd": (False, (("", b"welcome", 0o400),)),
    }
    writable = text.replace(":/etc/nginx/nginx.conf:ro", ":/etc/nginx/nginx.conf")
    assert problems({**files, "site/compose.yaml": writable.encode()}) == [
        "site/compose.yaml:5: services.web.volumes[0]: ./nginx.conf: a writable path beside the compose file is data, which a commit should not hold: "
        "use a named volume (data:/etc/nginx/nginx.conf, declared under the top-level volumes), or add :ro to mount it from the repository as configuration",
    ]
    out = text.replace("./nginx.conf:/etc", "../../etc/passwd:/etc")
    assert problems({**files, "site/compose.yaml": out.encode()}) == [
        "site/compose.yaml:5: services.web.volumes[0]: ../../etc/passwd: is outside the repository (or the repository itself): name a file or folder in it",
    ]
    gone = text.replace("./app.conf", "./gone.conf")
    assert problems({**files, "site/compose.yaml": gone.encode()}) == ["site/compose.yaml:11: configs.app_conf.file: ./gone.conf: not in the repository (looked for site/gone.conf)"]


def test_compose_volume_suffixes_selinux_labels_reach_the_bind_and_cached_or_delegated_are_ignored_as_on_linux() -> None:
    text = "services:\n  web:\n    image: a:1\n    volumes: ['/srv/a:/a:z', '/srv/b:/b:ro,Z', '/srv/c:/c:cached', '/srv/d:/d:delegated,ro']\n"
    from gitsync.core import config as config_mod

    web = load_files({"compose.yaml": text.encode()}, config_mod.PolicySettings(bind_mounts=(config_mod.BindRule("/srv", False),))).deployment("web")
    assert web is not None
    assert sorted((b.mount_path, b.read_only, b.relabel) for b in web.options.binds) == [("/a", False, "z"), ("/b", True, "Z"), ("/c", False, ""), ("/d", True, "")]
    plain = load_files({"compose.yaml": text.replace(":z'", "'").encode()}, config_mod.PolicySettings(bind_mounts=(config_mod.BindRule("/srv", False),))).deployment("web")
    assert plain is not None and L.spec_document(plain)["hostPaths"][0] == ["/srv/a", "/a", False]  # a bind without a label hashes as before
    assert problems({"compose.yaml": text.replace(":z'", ":z,Z'").encode()}) == [
        "compose.yaml:4: services.web.volumes[0]: not supported by gitsync: mode z,Z: ro or rw, z or Z (SELinux), cached, delegated or consistent (ignored on Linux, as by docker)"
    ]


def test_a_file_made_from_a_value_of_the_agents_environment_is_never_shown_in_a_plan_or_a_label() -> None:
    """A compose config from `environment:` (a value the agent configuration lets in from its
    environment) reaches the replica's file and nothing else: not the plan, its JSON, nor the labels."""
    import json

    from gitsync.core import config as config_mod
    from gitsync.core.live import HostObservation, LiveContainer
    from gitsync.runtimes.containers.plan import make_plan
    from gitsync.core.plantext import plan_text

    text = "services:\n  app:\n    image: a:1\n    configs: [{source: token, target: /run/token}]\nconfigs:\n  token: {environment: API_TOKEN}\n"
    hosts = config_mod.parse("name: t\nhosts:\n  - {name: h1, url: 'tcp://10.0.0.1:2375'}\n").hosts
    old = load_files({"compose.yaml": text.encode()}, variables={"API_TOKEN": "old-secret-value-41"}).deployment("app")
    new_state = load_files({"compose.yaml": text.encode()}, variables={"API_TOKEN": "new-secret-value-42"})
    new = new_state.deployment("app")
    assert old is not None and new is not None and new.options.files[0].entries[0][1].reveal() == b"new-secret-value-42"  # delivered as it is, sealed until then
    live = LiveContainer("c1", "t_app-0", "h1", "app", 0, L.spec_hash(old), "r", "running", None, 1, "a:1", spec=L.canonical_spec(old))
    plan = make_plan(new_state, {"h1": HostObservation("h1", True, (live,))}, hosts, "t")
    shown = plan_text(plan, "main@sha1:x", {}) + json.dumps(plan.to_json()) + json.dumps(L.container_labels("t", new, 0, "r"))
    assert "changed: secret token" in shown  # a value of the environment is a secret: keyed digest, named, never shown
    assert "secret-value" not in shown
