"""The Lattice ``.bit`` file, as far as the lab reads it: its comment header, and what a
programmer streams of it into the FPGA (all a board, or a twin, ever receives).

    0xFF 0x00 | comments, NUL-terminated ... | 0xFF | 0xFF 0xFF 0xBD 0xB3 (preamble) | ...
"""

from __future__ import annotations

__all__ = ["PREAMBLE", "bit_payload", "loaded_forms"]

#: The preamble that starts the configuration data.
PREAMBLE = b"\xff\xff\xbd\xb3"


def bit_payload(bit: bytes) -> bytes:
    """What openFPGALoader 0.10 streams of a ``.bit`` file: all but the ``0xFF 0x00``
    signature and the NUL-terminated comments after it. Raises ValueError for a file
    without that header."""
    if not bit.startswith(b"\xff\x00") or (end := bit.find(b"\xff", 2)) < 0:
        raise ValueError("not a Lattice .bit file: no 0xFF 0x00 header closed by 0xFF")
    return bit[end:]


def loaded_forms(bit: bytes) -> list[bytes]:
    """The ``.bit`` file, and the parts of it a programmer may send the FPGA: from the 0xFF
    closing the comment header (openFPGALoader 0.10), and from the preamble (newer ones)."""
    forms = [bit]
    if bit.startswith(b"\xff\x00") and (end := bit.find(b"\xff", 2)) > 0:
        forms.append(bit[end:])
    if (preamble := bit.find(PREAMBLE)) > 0:
        forms.append(bit[preamble:])
    return forms
