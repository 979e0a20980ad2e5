"""The agent's configuration: one `agent.toml` per institution.

    [coordinator]
    url = "https://fl.example.org"      # optional: `fmtl agent enroll --coordinator` stores it
    # ca_bundle = "ca.pem"              # a private CA for the coordinator's TLS certificate
    # timeout_s = 30

    [identity]
    # key_file = "state/identity.key"   # default: <state dir>/identity.key
    # The key's passphrase comes from FMTL_AGENT_KEY_PASSPHRASE, never from this file.

    [state]
    dir = "state"                       # enrollment profile, ledger, encrypted round state

    [data]                              # agent.mapping.DataMapping (or: mapping = "file.toml";
                                        # images: kind = "images", agent.image_mapping)
    path = "data/cleveland.csv"
    features = ["age", "sex", ...]
    labels = { disease = { column = "num", positive_above = 0 } }

    [privacy]                           # this institution's own budget
    epsilon = 3.0
    delta = 1e-5
    accountant = "rdp"                  # or "prv"
    # share_own_metrics = false         # true: also send its own validation metrics in clear
    # insecure_allow_unmasked_rounds = false  # NEVER IN PRODUCTION: loopback coordinators only

    [neighbour_graph]                   # the SecAgg+ graphs this agent accepts (docs/secagg.md)
    # collusion_fraction = 0.3333       # institutions assumed to collude with the coordinator
    # dropout_fraction = 0.1            # participants assumed to drop out of a round
    # log2_target = -40                 # refuse a graph above 2^-40 (exposure or failure)

    [training]
    device = "auto"                     # auto | cpu | cuda

    [personalisation]                   # local only: nothing here changes what is sent
    fine_tune = "none"                  # none | heads | heads_and_last_layer
    private_model = false               # a private model beside the federated one

    [daemon]
    poll_interval_s = 5

    # [testing] reproducible_dp_seed = 1  # tests and benchmarks only: `fmtl agent run` refuses it

Relative paths are read against the folder of the file. Every model forbids unknown keys:
a typo is an error naming the file and the key, never a silently ignored setting.
`load_config` is the one place that reads the file and the environment.
"""

from __future__ import annotations

import ipaddress
import math
import tomllib
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from agent.errors import ConfigError, DataError
from agent.sources import LocalDataMapping, read_mapping_file
from privacy.secagg.graph_security import (
    DEFAULT_COLLUSION_FRACTION,
    DEFAULT_DROPOUT_FRACTION,
    DEFAULT_LOG2_TARGET,
    GraphPolicy,
)

#: The environment variable holding the identity key's passphrase (never in agent.toml).
PASSPHRASE_ENV: Final = "FMTL_AGENT_KEY_PASSPHRASE"  # noqa: S105 - a variable name

IDENTITY_KEY_FILE: Final = "identity.key"
PROFILE_FILE: Final = "profile.json"
LEDGER_FILE: Final = "ledger.sqlite3"
ROUNDS_DIR: Final = "rounds"

#: Errors shown per malformed file (all on one line); more would not fit a line.
_MAX_ERRORS_SHOWN: Final = 3


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class CoordinatorSection(_Section):
    url: str | None = Field(
        default=None,
        description="Base URL of the coordinator (https://...); unset: the URL given to "
        "`fmtl agent enroll --coordinator`.",
    )
    ca_bundle: Path | None = Field(
        default=None, description="PEM file of the CA(s) to trust for the coordinator's TLS."
    )
    timeout_s: float = Field(default=30.0, gt=0.0, le=600.0, description="Per-request timeout.")

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        if url is None:
            return None
        return check_coordinator_url(url)


class IdentitySection(_Section):
    key_file: Path | None = Field(
        default=None,
        description="The Ed25519 identity key (PEM); default <state dir>/identity.key.",
    )


class StateSection(_Section):
    dir: Path = Field(
        default=Path("state"),
        description="Folder (created with mode 0700) for the enrollment profile, the privacy "
        "ledger and the encrypted round state.",
    )


class PrivacySection(_Section):
    epsilon: float = Field(
        gt=0.0, le=1000.0, description="This institution's total privacy budget ε."
    )
    delta: float = Field(default=1e-5, gt=0.0, lt=1.0, description="The δ of the (ε, δ) budget.")
    accountant: Literal["rdp", "prv"] = Field(
        default="rdp", description="Privacy accountant over the whole history: rdp or prv."
    )
    share_own_metrics: bool = Field(
        default=False,
        description="Also send this institution's own validation metrics of each round's "
        "global model in clear (the coordinator then stores and shows them per institution). "
        "Off: they only enter the federation-wide sums inside the masked update. The "
        "coordinator chooses the model evaluated, so a crafted model can read single "
        "validation records out of an institution's own metrics: turn this on only where "
        "the institution accepts that.",
    )

    insecure_allow_unmasked_rounds: bool = Field(
        default=False,
        description="NEVER IN PRODUCTION. Take part in rounds of a federation whose pinned "
        "spec says secagg.mode = 'plain': this institution's update then leaves UNMASKED, "
        "and the coordinator sees it. For benchmarks and tests on one machine: `fmtl agent "
        "run` refuses it unless the coordinator's URL is loopback. Off, every plain round is "
        "refused (and a round whose mode differs from the pinned spec always is).",
    )

    @field_validator("epsilon", "delta")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value


class NeighbourGraphSection(_Section):
    """What a SecAgg+ neighbour graph must withstand before this agent joins a round with it
    (privacy/secagg/graph_security.py; docs/secagg.md, "Neighbour graph")."""

    collusion_fraction: float = Field(
        default=DEFAULT_COLLUSION_FRACTION,
        ge=0.0,
        lt=0.5,
        description="Fraction of the round's institutions assumed to collude with the coordinator.",
    )
    dropout_fraction: float = Field(
        default=DEFAULT_DROPOUT_FRACTION,
        ge=0.0,
        lt=0.5,
        description="Fraction of the participants assumed to drop out of a round.",
    )
    log2_target: float = Field(
        default=DEFAULT_LOG2_TARGET,
        ge=-1000.0,
        le=-1.0,
        description="Refuse a graph whose bound on the probability that the colluders learn "
        "an honest update, or that dropouts fail the round, exceeds 2^log2_target.",
    )

    def policy(self) -> GraphPolicy:
        return GraphPolicy(self.collusion_fraction, self.dropout_fraction, self.log2_target)


class TrainingSection(_Section):
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="Where to train: auto (CUDA when available), cpu or cuda."
    )


class TestingSection(_Section):
    """Switches for tests and benchmarks; `fmtl agent run` refuses every one of them."""

    reproducible_dp_seed: int | None = Field(
        default=None,
        ge=0,
        description="NEVER IN PRODUCTION. Derives the DP noise and the Poisson sampling from "
        "this number, so that a test or benchmark can replay a run; anyone who knows it "
        "can then subtract the noise, and nothing trained with it is differentially "
        "private. `fmtl agent run` refuses a configuration that sets it.",
    )

    @property
    def active(self) -> list[str]:
        """The settings of this section that are set (each one refused in production)."""
        return ["testing.reproducible_dp_seed"] if self.reproducible_dp_seed is not None else []


class PersonalisationSection(_Section):
    """This institution's own personalisation (agent.personal): it changes only models and
    metrics that stay here, never what the round sends."""

    fine_tune: Literal["none", "heads", "heads_and_last_layer"] = Field(
        default="none",
        description="Fine-tune a local copy of the federated model: its heads, or its heads "
        "and the encoder's last layer.",
    )
    fine_tune_epochs: float = Field(default=1.0, gt=0.0, le=100.0)
    private_model: bool = Field(
        default=False,
        description="Keep a private model beside the federated one (trained on local data "
        "only) and mix their outputs.",
    )
    private_weight: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="Weight of the private model in the mix (0: the federated model alone).",
    )
    private_learning_rate: float | None = Field(
        default=None, gt=0.0, le=10.0, description="The private model's (unset: the spec's)."
    )


class DaemonSection(_Section):
    poll_interval_s: float = Field(
        default=5.0, gt=0.0, le=3600.0, description="Seconds between polls when idle."
    )
    long_poll_s: float = Field(
        default=25.0,
        ge=0.0,
        le=30.0,
        description="Let the coordinator hold each poll up to this long and answer as soon "
        "as the round moves on (0: plain polling every poll_interval_s).",
    )
    backoff_initial_s: float = Field(
        default=1.0, gt=0.0, le=600.0, description="First wait after a network error."
    )
    backoff_max_s: float = Field(
        default=60.0, gt=0.0, le=3600.0, description="Longest wait between retries."
    )
    backoff_jitter: float = Field(
        default=0.5, ge=0.0, le=1.0, description="Random fraction taken off each wait."
    )
    shutdown_grace_s: float = Field(
        default=20.0,
        ge=0.0,
        le=3600.0,
        description="On SIGTERM, a stage that finishes within this time is finished; "
        "longer ones (training) are abandoned cleanly.",
    )

    @model_validator(mode="after")
    def _ordered(self) -> DaemonSection:
        if self.backoff_initial_s > self.backoff_max_s:
            raise ValueError("backoff_initial_s must not exceed backoff_max_s")
        return self


class AgentConfig(_Section):
    """Everything in agent.toml, with relative paths already resolved."""

    coordinator: CoordinatorSection = CoordinatorSection()
    identity: IdentitySection = IdentitySection()
    state: StateSection = StateSection()
    data: LocalDataMapping
    privacy: PrivacySection
    neighbour_graph: NeighbourGraphSection = NeighbourGraphSection()
    training: TrainingSection = TrainingSection()
    personalisation: PersonalisationSection = PersonalisationSection()
    daemon: DaemonSection = DaemonSection()
    testing: TestingSection = TestingSection()

    _source: Path | None = PrivateAttr(default=None)
    _passphrase: SecretStr | None = PrivateAttr(default=None)

    @property
    def source(self) -> Path | None:
        """The file this configuration was read from."""
        return self._source

    @property
    def state_dir(self) -> Path:
        return self.state.dir

    @property
    def key_file(self) -> Path:
        return self.identity.key_file or self.state.dir / IDENTITY_KEY_FILE

    @property
    def profile_file(self) -> Path:
        return self.state.dir / PROFILE_FILE

    @property
    def ledger_file(self) -> Path:
        return self.state.dir / LEDGER_FILE

    @property
    def rounds_dir(self) -> Path:
        return self.state.dir / ROUNDS_DIR

    @property
    def key_passphrase(self) -> bytes | None:
        """The identity key's passphrase from FMTL_AGENT_KEY_PASSPHRASE (None when unset)."""
        if self._passphrase is None:
            return None
        return self._passphrase.get_secret_value().encode("utf-8")

    def resolved(self, base_dir: Path) -> AgentConfig:
        """The same configuration with every relative path made absolute against `base_dir`."""

        def absolute(path: Path) -> Path:
            return path if path.is_absolute() else (base_dir / path).resolve()

        coordinator = self.coordinator
        if coordinator.ca_bundle is not None:
            coordinator = coordinator.model_copy(
                update={"ca_bundle": absolute(coordinator.ca_bundle)}
            )
        identity = self.identity
        if identity.key_file is not None:
            identity = identity.model_copy(update={"key_file": absolute(identity.key_file)})
        copy = self.model_copy(
            update={
                "coordinator": coordinator,
                "identity": identity,
                "state": self.state.model_copy(update={"dir": absolute(self.state.dir)}),
                "data": self.data.resolve(base_dir),
            }
        )
        copy._source = self._source
        copy._passphrase = self._passphrase
        return copy


class AgentEnvironment(BaseSettings):
    """What the agent takes from the environment: only secrets that must not sit in a file."""

    model_config = SettingsConfigDict(env_prefix="FMTL_AGENT_", extra="ignore", frozen=True)

    key_passphrase: SecretStr | None = None


def is_loopback_url(url: str) -> bool:
    """Whether `url`'s host is this machine: `localhost`, 127.0.0.0/8 or ::1 (literally; a
    name that merely resolves to a loopback address does not count)."""
    host = urlsplit(url.strip()).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_coordinator_url(url: str) -> str:
    """A coordinator base URL: https://host[:port][/prefix] (http:// only on loopback), no
    query; trailing / removed. Plain HTTP anywhere else would expose the enrollment token
    and every round's traffic to the network."""
    parts = urlsplit(url.strip())
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ValueError(f"'{url}' is not an http(s) URL (e.g. https://fl.example.org)")
    if parts.scheme == "http" and not is_loopback_url(url):
        raise ValueError(
            f"'{url}': plain http is refused except on loopback (127.0.0.1, ::1, localhost); "
            "use https://"
        )
    if parts.query or parts.fragment:
        raise ValueError(f"'{url}' must not have a query or fragment")
    try:
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        raise ValueError(f"'{url}' has an invalid port") from None
    return url.strip().rstrip("/")


def refuse_unmasked_off_loopback(config: AgentConfig, url: str) -> None:
    """`ConfigError` when agent.toml allows unmasked rounds and the coordinator is not on
    this machine (`fmtl agent run` calls this)."""
    if config.privacy.insecure_allow_unmasked_rounds and not is_loopback_url(url):
        raise ConfigError(
            f"{config.source}: privacy.insecure_allow_unmasked_rounds: refused: the coordinator "
            f"{url} is not on loopback, and unmasked rounds would hand it this institution's "
            "update; remove the setting"
        )


def refuse_testing_switches(config: AgentConfig) -> None:
    """`ConfigError` when agent.toml sets a [testing] switch: `fmtl agent run` and
    `fmtl agent check` call this (only the seeded demo's runner does not)."""
    active = config.testing.active
    if active:
        raise ConfigError(
            f"{config.source}: {', '.join(active)}: refused: a test-and-benchmark switch that "
            "makes the DP noise predictable; remove the [testing] section"
        )


# --- Reading the file ----------------------------------------------------------------------------

_HINTS: Final = {
    ("identity", "passphrase"): f"never put the passphrase in the file; set {PASSPHRASE_ENV}",
    ("privacy", "epsilon"): "set your privacy budget, e.g. `epsilon = 3.0` under [privacy]",
    ("data",): "add a [data] section: path, features and labels of your data file",
    ("privacy",): "add a [privacy] section with at least `epsilon = ...` (your budget)",
    ("training", "seed"): "no longer a setting: DP noise and sampling never come from a "
    "seed (data.split_seed fixes the split, the federation the initial model)",
}


def _allowed_keys(loc: tuple[int | str, ...]) -> list[str]:
    """The keys the section enclosing `loc` takes (to suggest them on a typo)."""
    model: type[BaseModel] = AgentConfig
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field is not None else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def _describe(error: Any) -> str:
    loc: tuple[int | str, ...] = tuple(error.get("loc", ()))
    where = ".".join(str(part) for part in loc) or "(top level)"
    kind = error.get("type", "")
    message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    hint = _HINTS.get(tuple(str(p) for p in loc))
    if kind == "extra_forbidden":
        if hint:
            return f"{where}: {hint}"
        allowed = _allowed_keys(loc)
        suffix = f" (allowed here: {', '.join(allowed)})" if allowed else ""
        return f"{where}: unknown setting{suffix}"
    if kind == "missing":
        return f"{where}: missing; {hint}" if hint else f"{where}: missing required setting"
    value = error.get("input")
    shown = (
        f" (got {value!r})"
        if isinstance(value, (int, float, str, bool)) and len(repr(value)) < 80
        else ""
    )
    return f"{where}: {message}{shown}"


def parse_config(raw: object, *, source: str = "agent.toml") -> AgentConfig:
    """Validate a parsed TOML document; `ConfigError` names the file and every bad key."""
    try:
        return AgentConfig.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors()
        shown = "; ".join(_describe(error) for error in errors[:_MAX_ERRORS_SHOWN])
        more = len(errors) - _MAX_ERRORS_SHOWN
        tail = f" (and {more} more)" if more > 0 else ""
        raise ConfigError(f"{source}: {shown}{tail}") from None


def _include_mapping(raw: dict[str, Any], path: Path) -> dict[str, Any]:
    """`[data] mapping = "file.toml"`: the data mapping read from its own file."""
    data = raw.get("data")
    if not isinstance(data, dict) or "mapping" not in data:
        return raw
    if set(data) != {"mapping"}:
        others = ", ".join(sorted(set(data) - {"mapping"}))
        raise ConfigError(
            f"{path}: data.mapping: give either `mapping = FILE` or the mapping itself "
            f"(path, features, labels, ...), not both (also set: {others})"
        )
    if not isinstance(data["mapping"], str):
        raise ConfigError(f"{path}: data.mapping: must be the path of a mapping TOML file")
    file = Path(data["mapping"])
    if not file.is_absolute():
        file = path.resolve().parent / file
    try:
        mapping = read_mapping_file(file)
    except DataError as exc:
        raise ConfigError(f"{path}: data.mapping: {exc}") from None
    return {**raw, "data": mapping}


def load_config(path: Path, *, environment: AgentEnvironment | None = None) -> AgentConfig:
    """Read agent.toml and the passphrase variable; relative paths resolve against its folder."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no such file (write one: see docs/agent.md, 'Configuration')"
        ) from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not an agent.toml file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    raw = _include_mapping(raw, path)
    config = parse_config(raw, source=str(path))
    env = environment if environment is not None else AgentEnvironment()
    config._source = path.resolve()
    config._passphrase = env.key_passphrase
    return config.resolved(path.resolve().parent)


__all__ = [
    "IDENTITY_KEY_FILE",
    "LEDGER_FILE",
    "PASSPHRASE_ENV",
    "PROFILE_FILE",
    "ROUNDS_DIR",
    "AgentConfig",
    "AgentEnvironment",
    "CoordinatorSection",
    "DaemonSection",
    "IdentitySection",
    "PrivacySection",
    "StateSection",
    "TestingSection",
    "TrainingSection",
    "check_coordinator_url",
    "is_loopback_url",
    "load_config",
    "parse_config",
    "refuse_testing_switches",
    "refuse_unmasked_off_loopback",
]
