"""How the MQTT bridge reaches the plant's broker, and the topic names it uses.

Topics live under ``<topic_root>/<line>/<machine>/`` (issue 4): ``state`` (retained, with a last
will), ``telemetry``, ``alarms`` (+ retained ``alarms/active``), ``events``, commands on
``cmd/<username>/<command>`` and replies on ``reply/<username>/...``. The bridge listens to all
of ``cmd/#``, so a command topic of the wrong shape is refused with a reason, not ignored."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from controller.config.line import ConfigError


class MqttSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    username: str = "povd-controller"
    # A secret belongs in a file only root and the service can read, not in the line's YAML:
    # give password_file in production; password is for tests and quick trials.
    password: SecretStr | None = None
    password_file: Path | None = None
    topic_root: str = Field(default="povd", min_length=1)
    # None: the controller service's own line / machine names.
    line: str | None = None
    machine: str | None = None
    telemetry_hz: float = Field(default=1.0, gt=0, le=50)
    keepalive_s: int = Field(default=30, ge=5, le=600)
    tls: bool = False
    # Reconnect backoff: doubles from min to max (a few seconds: the plant should see us soon).
    reconnect_min_s: float = Field(default=0.5, gt=0, le=10)
    reconnect_max_s: float = Field(default=5.0, gt=0, le=60)
    # The durable event log is also polled, because a live item can precede its record.
    events_poll_s: float = Field(default=0.5, gt=0, le=10)
    client_id: str | None = None
    # 0: a clean session at every connection; a command sent while the controller is away is
    # dropped by the broker (the requester's wait times out). Above 0: the broker keeps the
    # session (and queues commands) that long; every command must then carry a Message Expiry
    # Interval, since one without could run hours after it was sent (issue 11).
    session_expiry_s: int = Field(default=0, ge=0, le=86_400)
    # Duplicate request ids (a resend after a reconnect, a broker's redelivery) get the first
    # reply again: the last `dedupe_requests` requests are remembered, each for
    # `dedupe_window_s` (a requester must not reuse an id within it for a new command).
    dedupe_requests: int = Field(default=1000, ge=1, le=100_000)
    dedupe_window_s: float = Field(default=600.0, gt=0, le=86_400)

    @model_validator(mode="after")
    def _checks(self) -> MqttSettings:
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must not be below reconnect_min_s")
        if self.password is not None and self.password_file is not None:
            raise ValueError("give password or password_file, not both")
        for name in ("topic_root", "line", "machine"):
            value = getattr(self, name)
            if value is not None and any(c in value for c in "/+#"):
                raise ValueError(f"{name} {value!r} may not contain '/', '+' or '#'")
        return self

    def resolved_password(self) -> str | None:
        if self.password_file is not None:
            return self.password_file.read_text().strip()
        return self.password.get_secret_value() if self.password is not None else None


def load_mqtt_settings(path: Path) -> MqttSettings:
    """``povd serve --mqtt-config FILE``: a YAML mapping of MqttSettings' fields."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(path, [str(exc)]) from exc
    try:
        return MqttSettings.model_validate(data or {})
    except ValidationError as exc:
        raise ConfigError(
            path,
            [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()],
        ) from exc


@dataclass(frozen=True)
class Topics:
    """Topic names for one machine; the command parser lives with them so both agree."""

    base: str  # <root>/<line>/<machine>

    @classmethod
    def for_machine(cls, root: str, line: str, machine: str) -> Topics:
        return cls(f"{root}/{line}/{machine}")

    @property
    def state(self) -> str:
        return f"{self.base}/state"

    @property
    def telemetry(self) -> str:
        return f"{self.base}/telemetry"

    @property
    def alarms(self) -> str:
        return f"{self.base}/alarms"

    @property
    def alarms_active(self) -> str:
        return f"{self.base}/alarms/active"

    @property
    def events(self) -> str:
        return f"{self.base}/events"

    @property
    def commands(self) -> str:
        """The subscription: everything under cmd/, well formed or not (a malformed one is
        refused with a reason where the requester can be answered)."""
        return f"{self.base}/cmd/#"

    def command(self, user: str, command: str) -> str:
        return f"{self.base}/cmd/{user}/{command}"

    def reply_prefix(self, user: str) -> str:
        """Where replies to ``user`` may go (the plant's ACL lets ``user`` read it)."""
        return f"{self.base}/reply/{user}/"

    def parse_command(self, topic: str) -> tuple[str, str] | None:
        """(username, the rest) from a topic under cmd/, or None if it is not under cmd/. The
        rest is a command's name only when the topic is well formed: the parser checks it."""
        prefix = f"{self.base}/cmd/"
        if not topic.startswith(prefix):
            return None
        user, _, rest = topic[len(prefix):].partition("/")
        return user, rest
