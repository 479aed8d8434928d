"""The README's quick start and walk-through, word for word, on a freshly installed Debian 12.

What a new user meets: a minimal bookworm (no python3, git, sudo or curl; PID 1 is not systemd),
this checkout copied in as `git clone` would leave it, the first command run as root in one
terminal and the walk-through typed into a second one. Slow (apt installs Docker and Python):
several minutes.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import freshdebian
from tests.conftest import IN_CI

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
CHECKOUT = "/root/gitsync"


def readme_block(after: str) -> list[str]:
    """The lines of the first ```sh block after the paragraph that starts with `after`."""
    text = README.read_text()
    at = text.index(after)
    m = re.search(r"```sh\n(.*?)```", text[at:], re.S)
    assert m, f"no sh block after {after!r} in README.md"
    return [line for line in m.group(1).splitlines() if line.strip()]


def checkout_files() -> list[Path]:
    """What a fresh clone of this checkout holds: tracked files plus new ones not ignored."""
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    return [Path(p) for p in out.decode().split("\0") if p and (ROOT / p).exists()]


@pytest.fixture(scope="module")
def machine() -> Iterator[freshdebian.Machine]:
    try:
        freshdebian.check_prerequisites()
    except freshdebian.Unavailable as exc:
        if IN_CI:
            pytest.fail(f"CI must run the fresh-Debian test: {exc}")
        pytest.skip(str(exc))
    with freshdebian.Machine() as m:
        yield m


def wait_for(log: Path, pattern: str, proc: subprocess.Popen[bytes] | None, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        if re.search(pattern, text):
            return text
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode} before printing {pattern!r}:\n{text[-4000:]}")
        time.sleep(1)
    raise AssertionError(f"{pattern!r} not seen within {timeout:.0f}s:\n{log.read_text(errors='replace')[-4000:]}")


def test_quick_start_and_walk_through_on_a_fresh_debian_12(machine: freshdebian.Machine, tmp_path: Path) -> None:
    # a minimal system: what the README's first command has to install itself
    bare = machine.sh("command -v python3 git sudo curl docker; cat /proc/1/comm; . /etc/os-release; echo $VERSION_CODENAME")
    assert bare.stdout.split() == ["sleep", "bookworm"], bare.stdout + bare.stderr
    machine.copy_in(checkout_files(), ROOT, CHECKOUT)

    _clone, first, test_cmd = readme_block("Get the code")
    assert first.split("#")[0].strip() == "./scripts/quickstart" and test_cmd.split("#")[0].strip() == "./scripts/test"

    # Terminal 1: the first command, which ends running the agent in the foreground.
    log1 = tmp_path / "terminal1.log"
    term1 = machine.terminal(f"{first}\necho \"::exit=$?\"", log1, cwd=CHECKOUT)
    try:
        text = wait_for(log1, r"starting the agent", term1, timeout=1500)
        assert "Traceback" not in text and "command not found" not in text, text
        text = wait_for(log1, r"sync \(.*startup.*\) success", term1, timeout=120)

        # Terminal 2: the walk-through, line by line as typed, each line's exit status noted.
        walk = readme_block("Then, in a second terminal")
        script = "".join(f"{line}\necho \"::rc=$? {i}\"\n" for i, line in enumerate(walk))
        r = machine.sh(script, timeout=300, cwd=CHECKOUT)
        codes = {int(i): int(rc) for rc, i in re.findall(r"::rc=(\d+) (\d+)", r.stdout)}
        assert len(codes) == len(walk), r.stdout + r.stderr
        for i, line in enumerate(walk):
            allowed = {0, 2} if line.startswith("gitsync plan") else {0}  # plan: 2 = changes pending, as documented
            assert codes[i] in allowed, f"walk-through line {line!r} exited {codes[i]}:\n{r.stdout}\n{r.stderr}"
        assert r.stderr == "", f"the walk-through printed errors:\n{r.stderr}"
        assert "asked it to sync now" in r.stdout and "success:" in r.stdout, r.stdout  # apply went through the agent

        ps = machine.sh("docker ps --format '{{.Names}} {{.Image}} {{.Status}}'")
        web = sorted(line for line in ps.stdout.splitlines() if line.startswith("example_web-"))
        assert len(web) == 1 and "gitsync-example/busybox:2" in web[0] and "(healthy)" in web[0], ps.stdout
        assert any(line.startswith("example_worker-0 ") for line in ps.stdout.splitlines()), ps.stdout
        # The three-tier shop the quick start applied too: a row through web -> api -> db on port 8000.
        shop = machine.sh("busybox wget -q -O- --post-data 'order 1' http://127.0.0.1:8000/cgi-bin/add"
                          " && busybox wget -q -O- http://127.0.0.1:8000/cgi-bin/rows")
        assert shop.stdout == "stored\norder 1\n", shop.stdout + shop.stderr + ps.stdout

        # Ctrl-C in terminal 1: the terminal's SIGINT to its foreground job (nsenter, outside, dies of it;
        # the shell inside waits for the agent and prints its exit status).
        os.killpg(term1.pid, signal.SIGINT)
        text = wait_for(log1, r"::exit=\d+", None, timeout=120)
        assert "::exit=0" in text and "stopped" in text, text[-3000:]
    finally:
        if term1.poll() is None:
            os.killpg(term1.pid, signal.SIGKILL)
        term1.wait(30)

    # The engine and the example outlived the agent; nothing of gitsync still runs.
    ps = machine.sh("docker ps --format '{{.Names}}'; pgrep -a -f 'gitsync run' || echo no-agent")
    assert "example_web-0" in ps.stdout and "example_worker-0" in ps.stdout and "no-agent" in ps.stdout, ps.stdout + ps.stderr

    # Run again: idempotent, installs nothing, keeps the config repository and its commits.
    again = machine.sh(f"GITSYNC_QUICKSTART_NO_RUN=1 {first}", timeout=600, cwd=CHECKOUT)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "installing" not in again.stdout and "making" not in again.stdout, again.stdout
    commits = machine.sh("git -C examples/deploy log --format=%s", cwd=CHECKOUT)
    assert commits.stdout.split("\n")[:2] == ["web: one replica of image 2", "The example application"], commits.stdout

    # The second command, from a plain shell (no virtual environment active), on the unit tests: it
    # installs the test bed's packages, npm's API description and pytest by itself.
    t = machine.sh(f"{test_cmd.split('#')[0].strip()} tests/unit -q", timeout=1500, cwd=CHECKOUT)
    assert t.returncode == 0, (t.stdout + t.stderr)[-4000:]
    assert re.search(r"\d+ passed", t.stdout), t.stdout[-2000:]
