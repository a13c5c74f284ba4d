"""Issue 11: random and malformed MQTT commands, against a real mosquitto (property-based).

Each example publishes a random topic suffix under alice's command space (what the broker's ACL
lets her publish: any level below cmd/alice/) with a random payload, asking for a reply. Every
one must be refused with a reason on the reply topic, audited (by the bridge, or by the service's
gate for a well-formed name that is no command), and move nothing. A message that would be a
real command (a command's name with a JSON object) is not a fuzz case: ``assume`` skips it.
The service's gate here is the real one (controller.service.gate) over a real audit trail.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from controller.records.audit import AuditTrail
from controller.service.gate import CommandGate
from controller.service.mqtt import MqttBridge
from controller.service.protocol import CommandReply
from controller.service.roles import SERVICE_COMMANDS, Role
from tests.integration.mosquitto_fixture import MosquittoBroker
from tests.integration.test_mqtt import BASE, DEADLINE_S, FakeService, settings_for
from tests.integration.test_mqtt_commands import Requester


class GatedService(FakeService):
    """The fake line behind the real gate: names that are no command are refused and audited
    there, as in LineService."""

    def __init__(self, audit: AuditTrail) -> None:
        super().__init__()
        self.gate = CommandGate(audit, lambda user: Role.OPERATOR if user == "alice" else None)

    async def execute(self, user: str, command: str, args: dict[str, Any],
                      session: str | None = None) -> CommandReply:
        async def act() -> CommandReply:
            return await FakeService.execute(self, user, command, args, session)
        return await self.gate.run(user, command, args, act)


class Rig:
    def __init__(self, service: GatedService, audit: AuditTrail, bridge: MqttBridge,
                 alice: Requester) -> None:
        self.service, self.audit, self.bridge, self.alice = service, audit, bridge, alice
        self.ids = itertools.count()


@pytest.fixture
async def rig(mosquitto: MosquittoBroker, tmp_path: Path) -> AsyncIterator[Rig]:
    with AuditTrail(tmp_path / "audit.sqlite") as audit:
        service = GatedService(audit)
        async with (MqttBridge(service, settings_for(mosquitto), audit=audit) as bridge,
                    Requester(mosquitto) as alice):
            await asyncio.wait_for(bridge.wait_connected(), DEADLINE_S)
            yield Rig(service, audit, bridge, alice)
            # After the whole fuzz, the service still answers and carries out a real command.
            await alice.send("hold", b"after-the-fuzz")
            [reply] = await alice.reply(b"after-the-fuzz")
            assert reply["accepted"] is True


# What a broker passes in a topic: no wildcards, no NUL, no control or unassigned characters.
_TOPIC_CHARS = st.characters(blacklist_categories=("Cc", "Cs", "Cn", "Co"),
                             blacklist_characters="+#")
_SUFFIXES = st.one_of(
    st.text(_TOPIC_CHARS, max_size=80),
    st.sampled_from(sorted(SERVICE_COMMANDS)),
    st.builds(lambda c, rest: f"{c}/{rest}", st.sampled_from(sorted(SERVICE_COMMANDS)),
              st.text(_TOPIC_CHARS, max_size=20)),
)
_JSON = st.recursive(st.none() | st.booleans() | st.floats(allow_nan=False) | st.text(),
                     lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
                     max_leaves=10)
_PAYLOADS = st.one_of(
    st.binary(max_size=300),
    _JSON.map(lambda v: json.dumps(v).encode()),
    st.text(max_size=100).map(str.encode),
)


def _would_be_a_command(suffix: str, payload: bytes) -> bool:
    if suffix not in SERVICE_COMMANDS:
        return False
    if payload == b"":
        return True
    try:
        return isinstance(json.loads(payload), dict)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return False


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(suffix=_SUFFIXES, payload=_PAYLOADS)
async def test_random_commands_are_refused_with_a_reason_audited_and_move_nothing(
        rig: Rig, suffix: str, payload: bytes) -> None:
    assume(not _would_be_a_command(suffix, payload))
    assume(len(f"{BASE}/cmd/alice/{suffix}".encode()) < 65_000)
    correlation = f"fuzz-{next(rig.ids)}".encode()
    audited_before = len(rig.audit.entries())

    await rig.alice.send(suffix, correlation, payload)
    [reply] = await rig.alice.reply(correlation)

    assert reply["accepted"] is False
    assert isinstance(reply["reason"], str)
    assert reply["reason"]
    entries = rig.audit.entries()[audited_before:]
    assert [(e.user, e.outcome) for e in entries] == [("alice", "refused")]
    assert entries[0].reason == reply["reason"]
    assert rig.service.executed == []  # the fake line never saw a command
    assert rig.service.status()["state"] == "Idle"
    assert rig.bridge.counters.errors == 0
