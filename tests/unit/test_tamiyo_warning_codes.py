"""SessionWarning's two codes: the text and the SessionWarningCode enum say the same."""

from esper.leyline.v1.tamiyo_pb2 import SessionWarningCode
from esper.tamiyo.session import warning_code

W = SessionWarningCode


def test_every_enum_value_is_the_text_code_in_upper_case():
    for value in W.values():
        if value == W.SESSION_WARNING_CODE_UNSPECIFIED:
            continue
        text = W.Name(value).removeprefix("SESSION_WARNING_CODE_").lower()
        assert warning_code(text) == value, text


def test_a_code_the_contract_does_not_know_yet_is_unspecified():
    assert warning_code("something_new") == W.SESSION_WARNING_CODE_UNSPECIFIED
    assert warning_code("") == W.SESSION_WARNING_CODE_UNSPECIFIED
