"""The outside world, each behind one module: Docker engines (`engine`, `hosts`), git (`source`,
`verify`), SOPS files (`sops`), registries (`registry`), forges' commit statuses (`status/`) and
Apprise (`apprise`). Their failures come out as gitsync's own errors."""
