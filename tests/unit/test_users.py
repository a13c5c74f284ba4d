"""Users and tokens: Argon2id hashes only, 0600 files, clear refusals, tokens that go stale."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from controller.service.roles import Role
from controller.service.users import TokenIssuer, User, UserError, UserStore

# Cheap parameters: the tests exercise the logic, not the hash's cost.
FAST = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


class Clock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def store(tmp_path: Path) -> UserStore:
    return UserStore(tmp_path / "users.json", hasher=FAST)


def test_add_verify_and_list(store: UserStore) -> None:
    assert store.add("olga", "correct horse", Role.OPERATOR) == User("olga", Role.OPERATOR)
    store.add("max", "battery staple", "maintenance")
    assert store.verify("olga", "correct horse") == User("olga", Role.OPERATOR)
    assert store.verify("olga", "wrong password") is None
    assert store.verify("nobody", "correct horse") is None
    assert store.get("max") == User("max", Role.MAINTENANCE)
    assert store.get("nobody") is None
    assert [u.name for u in store.list()] == ["max", "olga"]


def test_file_holds_only_argon2id_hashes_and_is_private(store: UserStore) -> None:
    store.add("olga", "correct horse", Role.OPERATOR)
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    text = store.path.read_text()
    assert "correct horse" not in text
    assert json.loads(text)["users"]["olga"]["hash"].startswith("$argon2id$")


@pytest.mark.parametrize(
    ("name", "password", "role", "fragment"),
    [
        ("olga", "short", "operator", "at least 8"),
        ("olga", " padded password", "operator", "spaces"),
        ("Olga", "long enough", "operator", "user name"),
        ("ol/ga", "long enough", "operator", "user name"),
        ("", "long enough", "operator", "user name"),
        ("olga", "long enough", "superuser", "unknown role"),
    ],
)
def test_bad_input_is_refused_with_a_reason(
    store: UserStore, name: str, password: str, role: str, fragment: str
) -> None:
    with pytest.raises(UserError) as caught:
        store.add(name, password, role)
    assert fragment in caught.value.reason
    assert not store.path.exists()


def test_duplicates_and_missing_users(store: UserStore) -> None:
    store.add("olga", "correct horse", Role.OPERATOR)
    with pytest.raises(UserError, match="already exists"):
        store.add("olga", "another password", Role.VIEWER)
    with pytest.raises(UserError, match="no such user"):
        store.set_password("nobody", "another password")
    with pytest.raises(UserError, match="no such user"):
        store.remove("nobody")


def test_set_password_role_and_remove(store: UserStore) -> None:
    store.add("olga", "correct horse", Role.OPERATOR)
    store.set_password("olga", "new password!")
    assert store.verify("olga", "correct horse") is None
    assert store.verify("olga", "new password!") == User("olga", Role.OPERATOR)
    store.set_role("olga", Role.ENGINEER)
    assert store.get("olga") == User("olga", Role.ENGINEER)
    store.remove("olga")
    assert store.get("olga") is None
    assert store.verify("olga", "new password!") is None


def test_changes_made_by_another_process_are_seen(store: UserStore) -> None:
    other = UserStore(store.path, hasher=FAST)  # e.g. `povd users` beside the service
    store.add("olga", "correct horse", Role.OPERATOR)
    assert other.get("olga") == User("olga", Role.OPERATOR)
    other.remove("olga")
    assert store.get("olga") is None


def test_hash_is_upgraded_when_the_parameters_change(tmp_path: Path) -> None:
    path = tmp_path / "users.json"
    UserStore(path, hasher=FAST).add("olga", "correct horse", Role.OPERATOR)
    stronger = PasswordHasher(time_cost=2, memory_cost=16, parallelism=1)
    store = UserStore(path, hasher=stronger)
    old = json.loads(path.read_text())["users"]["olga"]["hash"]
    assert stronger.check_needs_rehash(old)
    assert store.verify("olga", "correct horse") == User("olga", Role.OPERATOR)
    new = json.loads(path.read_text())["users"]["olga"]["hash"]
    assert new != old
    assert not stronger.check_needs_rehash(new)
    assert store.verify("olga", "correct horse") == User("olga", Role.OPERATOR)


def test_unreadable_store_is_an_error_with_the_path(tmp_path: Path) -> None:
    path = tmp_path / "users.json"
    path.write_text("{not json")
    with pytest.raises(UserError, match="cannot read the user store"):
        UserStore(path, hasher=FAST).get("olga")


# -- tokens --------------------------------------------------------------------------------


@pytest.fixture
def olga(store: UserStore) -> User:
    return store.add("olga", "correct horse", Role.OPERATOR)


def test_token_resolves_until_it_expires(store: UserStore, olga: User) -> None:
    clock = Clock()
    tokens = TokenIssuer(store, ttl_s=60, clock=clock)
    token = tokens.issue(olga)
    assert tokens.expires_at(token) == clock.t + 60
    assert tokens.resolve(token) == olga
    clock.t += 59.9
    assert tokens.resolve(token) == olga
    clock.t += 0.1
    assert tokens.resolve(token) is None
    assert tokens.resolve("made-up") is None


def test_tokens_are_random_and_revocable(store: UserStore, olga: User) -> None:
    tokens = TokenIssuer(store, clock=Clock())
    first, second = tokens.issue(olga), tokens.issue(olga)
    assert first != second
    assert len(first) >= 40
    assert tokens.revoke(first)
    assert tokens.resolve(first) is None
    assert tokens.resolve(second) == olga
    assert not tokens.revoke(first)
    assert tokens.revoke_user("olga") == 1
    assert tokens.resolve(second) is None


def test_resolve_reflects_the_store_now(store: UserStore, olga: User) -> None:
    tokens = TokenIssuer(store, clock=Clock())
    token = tokens.issue(olga)
    store.set_role("olga", Role.VIEWER)
    assert tokens.resolve(token) == User("olga", Role.VIEWER)  # the current role applies
    store.set_password("olga", "changed password")
    assert tokens.resolve(token) is None  # a new password ends old sessions
    token = tokens.issue(User("olga", Role.VIEWER))
    store.remove("olga")
    assert tokens.resolve(token) is None


def test_persisted_grants_survive_a_restart_and_hold_no_tokens(
    tmp_path: Path, store: UserStore, olga: User
) -> None:
    clock, path = Clock(), tmp_path / "tokens.json"
    token = TokenIssuer(store, clock=clock, path=path).issue(olga)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert token not in path.read_text()
    assert TokenIssuer(store, clock=clock, path=path).resolve(token) == olga


def test_issue_for_an_unknown_user_is_refused(store: UserStore) -> None:
    with pytest.raises(UserError, match="no such user"):
        TokenIssuer(store).issue(User("ghost", Role.ADMIN))
