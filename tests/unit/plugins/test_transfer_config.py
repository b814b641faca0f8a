from __future__ import annotations

import pytest

from kontur_plugins.transfer.config import TransferError, parse_transfer


def test_enabled_section_is_read():
    cfg = parse_transfer({"transfer": {"enabled": True, "repair_text": True, "issuer": "42-ONCO"}})
    assert cfg.enabled and cfg.repair_text and cfg.issuer == "42-ONCO"


def test_no_section_means_disabled():
    assert not parse_transfer({}).enabled


@pytest.mark.parametrize("sec,word", [
    ({"enabled": "yes"}, "transfer.enabled"),
    ({"enabled": True, "issuer": "A\\B"}, "transfer.issuer"),
    ({"enabled": True, "issuer": "x" * 65}, "transfer.issuer"),
    ({"enabled": True, "colour": 1}, "unknown key(s) colour"),
])
def test_bad_sections_name_what_is_wrong(sec, word):
    with pytest.raises(TransferError) as err:
        parse_transfer({"transfer": sec})
    assert word in str(err.value)
