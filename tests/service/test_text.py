"""Text from designs, tools and boards, made one safe line for a job's error."""

from __future__ import annotations

import pytest

from fpgalab.service.text import MAX_MESSAGE, one_line


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("plain words", "plain words"),
        ("line one\nline two\n\n  line three  ", "line one | line two | line three"),
        ("\x1b]52;c;b3duZWQ=\x07copied", "\\x1b]52;c;b3duZWQ=\\x07copied"),  # OSC 52
        (
            "\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\",
            "\\x1b]8;;http://x\\x1b\\link\\x1b]8;;\\x1b\\",
        ),
        ("failed\rfake: build OK", "failed | fake: build OK"),  # \r cannot overwrite
        ("\x1b[2A\x1b[Kfake", "\\x1b[2A\\x1b[Kfake"),  # cursor up, erase line
        ("abc\u202edcba\u2066x\u2069", "abc\\u202edcba\\u2066x\\u2069"),  # bidi overrides
        ("zero\u200bwidth\ufeff", "zero\\u200bwidth\\ufeff"),
        ("tab\tstop", "tab stop"),
        ("nul\x00byte\x7f", "nul\\x00byte\\x7f"),
        ("\u00e9t\u00e9 \u2014 ok", "\u00e9t\u00e9 \u2014 ok"),  # text stays text
    ],
)
def test_control_characters_are_escaped_and_lines_joined(raw: str, shown: str) -> None:
    """Escape sequences, bidi and zero-width controls are shown as escapes, never acted on;
    lines are joined; printable text is left as it is."""
    assert one_line(raw) == shown


def test_a_long_message_is_capped() -> None:
    """A 900,028-character error comes back at the cap, marked as cut."""
    shown = one_line("x" * 900_028)
    assert len(shown) == MAX_MESSAGE and shown.endswith("…")
