"""Valid PDF files for the estimate tests, written byte by byte.

Each test writes the content streams it means (the text it then counts with
tiktoken); this helper only adds what makes the bytes a PDF a reader opens:
the cross-reference table and the trailer (ISO 32000-1, 7.5.4 and 7.5.5).
"""

from __future__ import annotations

import base64
import zlib

# A standard 14 font: no font file needed (ISO 32000-1, 9.6.2.2).
HELVETICA = b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"


def pdf_file(objects: list[bytes], version: str = "1.4") -> bytes:
    """``objects`` numbered from 1 (the first is the catalog), with an xref table."""
    out = bytearray(f"%PDF-{version}\n".encode())
    offsets = []
    for number, obj in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + obj + b"\nendobj\n"
    start = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{offset:010d} 00000 n \n".encode() for offset in offsets)
    out += (f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\n"
            f"startxref\n{start}\n%%EOF\n").encode()
    return bytes(out)


def stream(content: bytes, extra: bytes = b"") -> bytes:
    """A stream object holding ``content`` as is (``extra``: more dictionary keys)."""
    return (b"<< /Length " + str(len(content)).encode() + b" " + extra + b">>\nstream\n"
            + content + b"\nendstream")


def text_pdf(pages: list[str], box: tuple[int, int] = (612, 792)) -> bytes:
    """One ``Tj`` line of Helvetica text a page on a ``box``-point MediaBox."""
    kids = " ".join(f"{3 + 2 * i} 0 R" for i in range(len(pages)))
    font = 3 + 2 * len(pages)
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>",
               f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} >>".encode()]
    for i, text in enumerate(pages):
        objects.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {box[0]} {box[1]}] "
                       f"/Contents {4 + 2 * i} 0 R "
                       f"/Resources << /Font << /F1 {font} 0 R >> >> >>".encode())
        objects.append(stream(f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()))
    objects.append(HELVETICA)
    return pdf_file(objects)


def object_stream_pdf(shown: list[bytes]) -> bytes:
    """PDF 1.5: the page tree inside a compressed object stream (``/Type /ObjStm``,
    7.5.7) and a cross-reference *stream* (7.5.8) in place of the table; only
    the catalog, the font and the content streams are plain objects."""
    n = len(shown)
    pages = 2
    first_page = 3
    contents = first_page + n          # content streams: n objects
    font = contents + n
    objstm = font + 1
    kids = " ".join(f"{first_page + i} 0 R" for i in range(n))
    dicts = [f"<< /Type /Pages /Kids [{kids}] /Count {n} >>".encode()]
    dicts += [f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents {contents + i} 0 R "
              f"/Resources << /Font << /F1 {font} 0 R >> >> >>".encode() for i in range(n)]
    header, body, offset = [], b"", 0
    for number, obj in enumerate(dicts, pages):
        header.append(f"{number} {offset}")
        body += obj + b" "
        offset += len(obj) + 1
    head = (" ".join(header) + " ").encode()
    packed = zlib.compress(head + body)
    out = bytearray(b"%PDF-1.5\n")
    where: dict[int, int] = {}
    plain = {1: b"<< /Type /Catalog /Pages 2 0 R >>", font: HELVETICA,
             objstm: stream(packed, f"/Type /ObjStm /N {len(dicts)} /First {len(head)} "
                                    "/Filter /FlateDecode ".encode())}
    plain.update({contents + i: stream(zlib.compress(c), b"/Filter /FlateDecode ")
                  for i, c in enumerate(shown)})
    for number in sorted(plain):
        where[number] = len(out)
        out += f"{number} 0 obj\n".encode() + plain[number] + b"\nendobj\n"
    xref = objstm + 1
    where[xref] = len(out)
    rows = [bytes([0]) + (0).to_bytes(4, "big") + (65535).to_bytes(2, "big")]
    for number in range(1, xref + 1):
        if number in where:
            rows.append(bytes([1]) + where[number].to_bytes(4, "big") + bytes(2))
        else:  # inside the object stream, at its index
            index = number - pages
            rows.append(bytes([2]) + objstm.to_bytes(4, "big") + index.to_bytes(2, "big"))
    table = b"".join(rows)
    out += (f"{xref} 0 obj\n".encode()
            + stream(table, f"/Type /XRef /Size {xref + 1} /W [1 4 2] /Root 1 0 R ".encode())
            + b"\nendobj\n" + f"startxref\n{where[xref]}\n%%EOF\n".encode())
    return bytes(out)


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()
