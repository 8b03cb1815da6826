"""Passwords that never sit in the configuration file: read from a file or the environment.

Used for the LDAP bind password and the cluster database password. A file's trailing line
break is not part of the password (`echo secret > file` is how operators write one).
"""

from __future__ import annotations

import os
from pathlib import Path

from gateway.config import ConfigError


def read_secret(where: str | Path, file: Path | None, env: str, *, file_key: str,
                env_key: str) -> str | None:
    """The secret from the variable `env` names or from `file`; None when neither is set.

    `file_key` and `env_key` are the dotted keys named in errors.
    """
    if env and file:
        raise ConfigError(where, env_key, f"set either {env_key.rpartition('.')[2]} or "
                                          f"{file_key.rpartition('.')[2]}, not both")
    if env:
        value = os.environ.get(env)
        if value is None:
            raise ConfigError(where, env_key, f"environment variable {env} is not set")
        return value
    if file:
        try:
            return file.read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as e:
            reason = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
            raise ConfigError(where, file_key, f"cannot read {file}: {reason}") from None
    return None
