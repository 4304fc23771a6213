"""Store key checks: valid keys are remembered (issue 22: the regex ran ~35 times per
connect+disconnect), and nothing invalid ever passes because of that."""

from __future__ import annotations

import pytest

from libnet.errors import BadRequest
from libnet.store import base
from libnet.store.base import check_key

GOOD = "libnet/v1/endpoints/" + "a" * 64 + "/" + "b" * 64
BAD = ["", "/a", "a/", "a//b", "a/../b", "a/./b", "a b", "x" * 513, "a/é"]


def test_a_valid_key_is_checked_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base, "_valid_keys", {})
    calls = []
    real = base._KEY_RE

    class Counting:
        def fullmatch(self, text: str):  # type: ignore[no-untyped-def]
            calls.append(text)
            return real.fullmatch(text)

    monkeypatch.setattr(base, "_KEY_RE", Counting())
    for _ in range(3):
        assert check_key(GOOD) == GOOD
    assert calls == [GOOD]
    assert check_key(GOOD + "/", prefix=True)  # prefixes are checked every time, not remembered
    assert len(calls) == 2 and GOOD + "/" not in base._valid_keys


@pytest.mark.parametrize("key", BAD)
def test_invalid_keys_are_refused_before_and_after_valid_ones(key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base, "_valid_keys", {})
    for _ in range(2):
        with pytest.raises(BadRequest):
            check_key(key)
        check_key(GOOD)
    assert key not in base._valid_keys


def test_not_a_string_and_str_subclasses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base, "_valid_keys", {})

    class Key(str):
        pass

    with pytest.raises(BadRequest):
        check_key(b"libnet/v1/x")
    assert check_key(Key("libnet/v1/x")) == "libnet/v1/x"
    assert not base._valid_keys  # a subclass (whose == and hash may be its own) is never remembered


def test_the_remembered_keys_stay_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base, "_valid_keys", {})
    monkeypatch.setattr(base, "VALID_KEYS_KEPT", 8)
    for i in range(100):
        check_key(f"libnet/v1/k{i}")
        assert len(base._valid_keys) <= 8
    assert "libnet/v1/k99" in base._valid_keys


def test_a_str_subclass_posing_as_str_is_not_taken_for_a_remembered_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """``key.__class__`` is the object's to answer (a property may say ``str``); ``type(key)`` is not."""
    monkeypatch.setattr(base, "_valid_keys", {})
    check_key(GOOD)

    class Posing(str):
        @property  # type: ignore[misc]
        def __class__(self):  # type: ignore[no-untyped-def,override]
            return str

        def __hash__(self) -> int:
            return hash(GOOD)

        def __eq__(self, other: object) -> bool:
            return True

    with pytest.raises(BadRequest):
        check_key(Posing("a/../../b"))
    assert check_key(Posing("libnet/v1/y")) == "libnet/v1/y"
    assert list(base._valid_keys) == [GOOD]
