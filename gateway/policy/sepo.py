"""The SEPO member list: domains that receive mail only over verified, forced TLS.

One domain per line, '#' starts a comment, a leading '.' matches subdomains.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gateway.config import ConfigError
from gateway.policy.address import domain_matches


@dataclass(frozen=True)
class SepoList:
    """A loaded member list; replaced whole on SIGHUP."""

    domains: frozenset[str]
    source: Path

    def __contains__(self, domain: str) -> bool:
        return domain_matches(domain, self.domains)

    def __len__(self) -> int:
        return len(self.domains)


def load_sepo(path: Path, config_file: Path | str) -> SepoList:
    """Read the list; a missing file or a malformed line is a configuration error."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(config_file, "sepo.list", f"cannot read {path}: {e.strerror}") from None
    domains = set()
    for n, line in enumerate(text.splitlines(), 1):
        entry = line.split("#", 1)[0].strip().lower()
        if not entry:
            continue
        bare = entry.removeprefix(".")
        if " " in entry or "@" in entry or "." not in bare or not bare.replace("-", "").replace(
                ".", "").isalnum():
            raise ConfigError(config_file, "sepo.list", f"{path} line {n}: {line.strip()!r} "
                                                        "is not a domain")
        domains.add(entry)
    return SepoList(frozenset(domains), path)
