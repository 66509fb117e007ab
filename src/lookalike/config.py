"""Settings from the environment: which organisation, its secret, and where Milvus lives."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InvalidInputError

# Organisation codes become database names, user names and environment-variable names:
# letters and digits only, so no path, expression or identifier trick can pass through.
_CODOPS = re.compile(r"^[a-z][a-z0-9]{1,31}$")


def validate_codops(code: str) -> str:
    """Return the organisation code in lower case, or raise if it is not a plain code."""
    if not isinstance(code, str) or not _CODOPS.match(code.strip().lower()):
        raise InvalidInputError(
            f"organisation code {code!r} is invalid: use 2-32 letters and digits, "
            "starting with a letter (e.g. 'ltlrt')"
        )
    return code.strip().lower()


class Secret:
    """A password or token that never shows itself in a repr, a log line or an error."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return "Secret('********')" if self._value else "Secret('')"

    __str__ = __repr__


def default_data_dir() -> Path:
    """Where the embedded engine keeps its files when ``LOOKALIKE_DATA_DIR`` is unset."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(Path.home(), ".local", "share")
    return Path(base) / "lookalike"


@dataclass(frozen=True)
class Settings:
    """Everything :func:`lookalike.connect` needs, usually read by :meth:`from_env`.

    ``uri`` empty means the embedded engine (Milvus Lite) under ``data_dir``; an
    ``http(s)://`` or ``tcp://`` URI means a Milvus server, where the user is the organisation
    code and the password its secret.
    """

    codops: str = "default"
    password: Secret = field(default_factory=lambda: Secret(""))
    uri: str = ""
    data_dir: Path = field(default_factory=default_data_dir)
    retry_seconds: float = 30.0  # how long reads retry while a server is unavailable

    def __post_init__(self) -> None:
        object.__setattr__(self, "codops", validate_codops(self.codops))
        if isinstance(self.password, str):
            object.__setattr__(self, "password", Secret(self.password))
        object.__setattr__(self, "data_dir", Path(self.data_dir).expanduser())

    @property
    def cache_dir(self) -> Path:
        """Where the embedding cache lives (beside the embedded data, or per user for a server)."""
        return self.data_dir / "embedding-cache"

    @property
    def embedded(self) -> bool:
        return not self.uri

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Read ``CODOPS``, ``CODOPS_<CODE>_MILVUS_PASSWORD``, ``LOOKALIKE_MILVUS_URI`` and
        ``LOOKALIKE_DATA_DIR``; keyword arguments win over the environment."""
        env = os.environ if environ is None else environ
        codops = overrides.pop("codops", None)
        codops = validate_codops(env.get("CODOPS") or "default" if codops is None else codops)
        password = overrides.pop("password", None)
        if password is None:
            password = env.get(password_variable(codops), "")
        uri = overrides.pop("uri", None)
        if uri is None:
            uri = env.get("LOOKALIKE_MILVUS_URI", "")
        data_dir = overrides.pop("data_dir", None) or env.get("LOOKALIKE_DATA_DIR") or default_data_dir()
        retry = overrides.pop("retry_seconds", None)
        retry = env.get("LOOKALIKE_RETRY_SECONDS", "30") if retry is None else retry
        if overrides:
            raise InvalidInputError(f"unknown setting(s): {', '.join(sorted(overrides))}")
        try:
            retry_seconds = float(retry)
        except ValueError:
            raise InvalidInputError(f"LOOKALIKE_RETRY_SECONDS must be a number of seconds, not {retry!r}") from None
        return cls(codops=codops, password=Secret(str(password)), uri=str(uri), data_dir=Path(str(data_dir)),
                   retry_seconds=retry_seconds)


def password_variable(codops: str) -> str:
    """The environment variable that holds an organisation's Milvus secret."""
    return f"CODOPS_{validate_codops(codops).upper()}_MILVUS_PASSWORD"
