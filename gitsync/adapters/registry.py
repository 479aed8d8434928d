"""An image registry, through its own API (the distribution API: tags listed page by page, with the
bearer token challenge most registries use, and basic credentials from the environment), by
`python-dxf`. Its failures are RegistryError, in a few words."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

from ..core.config import ImagePolicy
from ..core.images import choose, split_repository

TIMEOUT = 20.0
PAGE = 100  # tags asked for per request (the registry says where the next page is)


class RegistryError(Exception):
    pass


def _registry(policy: ImagePolicy, call: Callable[[Any], Any]) -> Any:
    """`call` with a client of the policy's repository; the registry's failures as RegistryError."""
    import requests
    from dxf import DXF, DXFBase, exceptions as dxf_errors

    host, repo = split_repository(policy.repository)
    user = os.environ.get(policy.username_env) if policy.username_env else None
    password = os.environ.get(policy.password_env) if policy.password_env else None
    if policy.username_env and not user:
        raise RegistryError(f"${policy.username_env} is not set")

    def auth(dxf: DXFBase, response: requests.Response) -> None:
        dxf.authenticate(user, password, actions=["pull"], response=response)

    client = DXF(host, repo, auth=auth, insecure=policy.insecure, tlsverify=policy.ca_file or True, timeout=TIMEOUT)
    try:
        return call(client)
    except dxf_errors.DXFUnauthorizedError:
        given = f"${policy.username_env}/${policy.password_env}" if policy.username_env else "no credentials"
        raise RegistryError(f"{host} refused {given} for {repo} (credentials?)") from None
    except requests.HTTPError as exc:
        code = exc.response.status_code if exc.response is not None else "?"
        raise RegistryError(f"{host} answered {code} for {repo}" + (" (credentials?)" if code in (401, 403) else "")) from None
    except (requests.RequestException, dxf_errors.DXFError, OSError) as exc:
        raise RegistryError(f"{host} cannot be reached: {type(exc).__name__}: {str(exc)[:200]}") from None


def list_tags(policy: ImagePolicy) -> list[str]:
    """Every tag of the policy's repository, through the registry's API (all pages)."""
    return list(_registry(policy, lambda c: list(c.list_aliases(batch_size=PAGE))))


def digest_of(policy: ImagePolicy, tag: str) -> str:
    """The manifest digest the registry gives for `tag` (what `docker pull repo@sha256:...` fetches)."""
    _, response = _registry(policy, lambda c: c.head_manifest_and_response(tag))
    digest = response.headers.get("Docker-Content-Digest") if response is not None else None
    if not digest or not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
        raise RegistryError(f"{split_repository(policy.repository)[0]} gave no digest for {tag}")
    return str(digest)


def resolve(policy: ImagePolicy) -> str | None:
    """The policy's choice as a marked line will name it: the tag, and its digest when the policy pins one."""
    tag = choose(policy, list_tags(policy))
    if tag is None or not policy.pin_digest:
        return tag
    return f"{tag}@{digest_of(policy, tag)}"
