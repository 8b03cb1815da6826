"""The document readers' own checks, as the file streams by in pieces of any size."""

from __future__ import annotations

import pytest

from gateway.policy.dlp.documents import OLE_MAGIC, ole_is_encrypted_ooxml

NAME = "EncryptedPackage".encode("utf-16-le")  # as an OLE directory entry names it


def pieces(data: bytes, size: int, offset: int) -> list[bytes]:
    """`data` cut every `size` bytes, starting `offset` bytes in."""
    cuts = [0, *range(offset, len(data), size), len(data)]
    return [data[a:b] for a, b in zip(cuts, cuts[1:], strict=False) if a < b]


@pytest.mark.parametrize("size", range(1, len(NAME) + 2))
def test_an_encrypted_package_is_seen_however_the_pieces_fall(size: int) -> None:
    data = OLE_MAGIC + b"\0" * 301 + NAME + b"\0" * 50
    for offset in range(size):
        assert ole_is_encrypted_ooxml(pieces(data, size, offset)), (size, offset)
        plain = data.replace(NAME, b"\0" * len(NAME))
        assert not ole_is_encrypted_ooxml(pieces(plain, size, offset))
