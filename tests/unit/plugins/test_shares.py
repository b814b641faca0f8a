"""The shares of the TsAMI (issue 12): who may open what, a share's end,
its audit trail (kontur_plugins.shares, with its sqlite3 store)."""
from __future__ import annotations

import pytest

from kontur_plugins import shares

DAY = 86400.0


def test_a_scoped_user_sees_their_hospitals_studies_and_shared_ones_and_region_wide_users_all():
    issuers = {"42-CITY": "city", "42-RURAL": "rural"}
    assert shares.hospital_of(" 42-CITY ", issuers) == "city" and shares.hospital_of("", issuers) is None
    assert shares.may_view(None, "rural", False)                   # region-wide
    assert shares.may_view("city", "city", False)
    assert not shares.may_view("city", "rural", False) and shares.may_view("city", "rural", True)
    assert not shares.may_view("city", None, False)                # a study of no known hospital: not theirs


def test_a_share_lasts_its_days_is_extended_not_duplicated_and_is_audited(tmp_path):
    store = shares.Shares(str(tmp_path / "shares.sqlite3"))
    t = 1_800_000_000.0
    s = store.grant("1.2.3", "city", 2, "двойное чтение", "kontur", t)
    assert store.active("city", "1.2.3", t + DAY) == s and store.active("rural", "1.2.3", t) is None
    assert store.active("city", "1.2.3", t + 2 * DAY + 1) is None
    assert s.state(t + 2 * DAY + 1) == "expired"
    again = store.grant("1.2.3", "city", 5, "второе мнение", "kontur", t + DAY)
    assert again.id == s.id and again.expires_at == t + 6 * DAY and len(store.all()) == 1
    store.opened(again, "ivanova", t + DAY)
    assert store.revoke(s.id, "archivist", t + DAY).state(t + DAY) == "revoked"
    assert store.active("city", "1.2.3", t + DAY) is None
    # the trail survives the store being opened again (a restart of Orthanc)
    audit = shares.Shares(str(tmp_path / "shares.sqlite3")).audit("1.2.3")
    assert [(a["what"], a["who"]) for a in audit] == [("shared", "kontur"), ("share extended", "kontur"),
                                                      ("opened through share", "ivanova"),
                                                      ("share revoked", "archivist")]


@pytest.mark.parametrize("body,words", [
    ([], "JSON object"), ({"hospital": "city", "reason": "x"}, "study:"),
    ({"study": "1.2", "hospital": "City", "reason": "x"}, "'City' is not a hospital"),
    ({"study": "1.2", "hospital": "city", "days": 91, "reason": "x"}, "from 1 to 90"),
    ({"study": "1.2", "hospital": "city", "days": True, "reason": "x"}, "whole number"),
    ({"study": "1.2", "hospital": "city", "reason": "a\nb"}, "on one line"),
])
def test_a_share_request_is_checked(body, words):
    with pytest.raises(shares.ShareError) as e:
        shares.check_request(body, {"city", "rural"})
    assert words in str(e.value)
    assert shares.check_request({"study": "1.2", "hospital": "city", "reason": "x"}, {"city"}) == ("1.2", "city", 7, "x")
