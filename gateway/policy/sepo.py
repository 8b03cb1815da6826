"""The SEPO member list: domains that receive mail only over verified, forced TLS.

One domain per line, '#' starts a comment, a leading '.' matches subdomains. Operators
replace the file from a cron job, so besides SIGHUP the daemon re-reads it when it
changes (`SepoWatch`); a new file that cannot be read, is malformed, is empty or is still
being written keeps the running list, as a bad SIGHUP reload keeps the running
configuration.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from gateway.config import ConfigError
from gateway.observe import metrics
from gateway.policy.address import domain_matches

log = logging.getLogger(__name__)

# What tells one version of the file from the next: modification time, inode (a file
# renamed into place keeps its own mtime, e.g. after `cp -p`) and size.
FileStamp = tuple[int, int, int]


@dataclass(frozen=True)
class SepoList:
    """A loaded member list; replaced whole on SIGHUP or when its file changes."""

    domains: frozenset[str]
    source: Path
    stamp: FileStamp | None = field(default=None, compare=False)  # of the file as read

    def __contains__(self, domain: str) -> bool:
        return domain_matches(domain, self.domains)

    def __len__(self) -> int:
        return len(self.domains)


def file_stamp(path: Path) -> FileStamp | None:
    """The file's version as `stat` sees it; None when it cannot be seen."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_ino, st.st_size


def load_sepo(path: Path, config_file: Path | str) -> SepoList:
    """Read the list; a missing file or a malformed line is a configuration error."""
    stamp = file_stamp(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        why = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
        raise ConfigError(config_file, "sepo.list", f"cannot read {path}: {why}") from None
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
    return SepoList(frozenset(domains), path, stamp)


class SepoWatch:
    """Notices a changed list file and reads it once it has stopped changing.

    `poll` runs every `sepo.watch_interval` seconds (in a worker thread: it does file
    I/O). A new version is read only when two polls in a row saw the same version, so a
    cron job writing the file in place is never caught halfway; a version that was
    refused is not tried again until the file changes once more.
    """

    def __init__(self, config_file: Path | str) -> None:
        self.config_file = config_file
        self._seen: FileStamp | None = None  # the version the previous poll saw
        self._refused: FileStamp | None = None
        self._missing = False

    def poll(self, current: SepoList) -> SepoList | None:
        """The new list when the file changed and the new version is good, else None."""
        stamp = file_stamp(current.source)
        if stamp is None:
            if not self._missing:
                self._missing = True
                self._refuse(current, f"{current.source} cannot be seen any more")
            return None
        self._missing = False
        if stamp == current.stamp or stamp == self._refused:
            return None
        if stamp != self._seen:
            self._seen = stamp  # changed since the last look: wait until it holds still
            return None
        try:
            new = load_sepo(current.source, self.config_file)
            if new.stamp != stamp:
                return None  # changed while it was read; the next polls will see
            if not new.domains and current.domains:
                raise ConfigError(self.config_file, "sepo.list",
                                  f"{current.source} is now empty (a failed download?); "
                                  "send SIGHUP to load an empty list on purpose")
        except ConfigError as e:
            self._refused = stamp
            self._refuse(current, str(e))
            return None
        metrics.last_reload_successful.labels(source="sepo").set(1)
        log.info("SEPO list %s changed: %d domain(s), before %d", current.source, len(new),
                 len(current))
        return new

    def _refuse(self, current: SepoList, why: str) -> None:
        metrics.last_reload_successful.labels(source="sepo").set(0)
        log.error("SEPO list not reloaded, keeping the %d domain(s) loaded: %s", len(current),
                  why)
