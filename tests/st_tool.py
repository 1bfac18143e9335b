#!/usr/bin/env python3
"""Damages and compares safetensors checkpoints for the fault tests.

  st_tool.py poison IN OUT NAME INDEX VALUE  element INDEX of F32 tensor NAME := VALUE
                                             (nan, inf, 1e30, ...); its CRC32C is
                                             updated, so the file stays well-formed
  st_tool.py flip IN OUT NAME BYTE           XORs byte BYTE of tensor NAME with 0x01,
                                             checksum left as it was (a damaged file)
  st_tool.py strip IN OUT                    drops every crc32c.* metadata entry (a
                                             checkpoint from before checksums)
  st_tool.py same A B                        exit 0 when A and B hold the same tensors,
                                             bit for bit (weights and optimizer moments)
  st_tool.py close A B TOL                   exit 0 when every tensor of B is within TOL of
                                             A's: |B - A| / |A| (Euclidean norms) per tensor;
                                             prints the worst
  st_tool.py meta FILE KEY                   prints __metadata__[KEY]
"""
import array
import json
import math
import struct
import sys

_TABLE = []
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ (0x82F63B78 & -(_c & 1))
    _TABLE.append(_c)


def crc32c(data):
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def read(path):
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), bytearray(raw[8 + n:])


def write(path, header, data):
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + bytes(data))


def span(header, name):
    if name not in header:
        sys.exit(f"st_tool: no tensor '{name}'")
    return header[name]["data_offsets"]


def pairs(path_a, path_b):
    """(name, bytes in A, bytes in B) of every tensor; exits if the names differ."""
    (ha, da), (hb, db) = read(path_a), read(path_b)
    names = sorted(k for k in ha if k != "__metadata__")
    if names != sorted(k for k in hb if k != "__metadata__"):
        sys.exit("different tensors")
    for name in names:
        (a0, a1), (b0, b1) = ha[name]["data_offsets"], hb[name]["data_offsets"]
        yield name, da[a0:a1], db[b0:b1]


def main(argv):
    cmd = argv[1]
    if cmd == "poison":
        src, out, name, index, value = argv[2:7]
        header, data = read(src)
        begin, end = span(header, name)
        struct.pack_into("<f", data, begin + 4 * int(index), float(value))
        meta = header.get("__metadata__", {})
        if "crc32c." + name in meta:
            meta["crc32c." + name] = "%08x" % crc32c(data[begin:end])
        write(out, header, data)
    elif cmd == "flip":
        src, out, name, offset = argv[2:6]
        header, data = read(src)
        begin, _ = span(header, name)
        data[begin + int(offset)] ^= 0x01
        write(out, header, data)
    elif cmd == "strip":
        src, out = argv[2:4]
        header, data = read(src)
        meta = header.get("__metadata__", {})
        for key in [k for k in meta if k.startswith("crc32c.")]:
            del meta[key]
        write(out, header, data)
    elif cmd == "same":
        for name, a, b in pairs(argv[2], argv[3]):
            if a != b:
                sys.exit(f"tensor '{name}' differs")
    elif cmd == "close":
        worst, where = 0.0, ""
        for name, a, b in pairs(argv[2], argv[3]):
            x, y = array.array("f", bytes(a)), array.array("f", bytes(b))
            scale = math.sqrt(sum(v * v for v in x)) or 1.0
            diff = math.sqrt(sum((u - v) ** 2 for u, v in zip(x, y))) / scale
            if diff >= worst:
                worst, where = diff, name
        print(f"largest relative difference {worst:.2e} ({where})")
        sys.exit(0 if worst <= float(argv[4]) else 1)
    elif cmd == "meta":
        header, _ = read(argv[2])
        print(header.get("__metadata__", {}).get(argv[3], ""))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
