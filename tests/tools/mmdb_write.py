#!/usr/bin/env python3
"""Writes a tiny MaxMind DB (MMDB v2) for tests/unit/test_geo.c. Standard library only.

Usage: mmdb_write.py OUT.mmdb

Format (MaxMind DB spec v2.0): a binary search tree over the address bits (IPv6 tree; IPv4
networks live under ::/96), 32-bit records: a record < node_count points to a node,
== node_count means "no data", > node_count points into the data section at
(record - node_count - 16). Then 16 zero bytes, the data section, and the metadata map after
the marker b"\\xab\\xcd\\xefMaxMind.com".

The networks mix both layouts geo.c reads: MaxMind's (country.iso_code, subdivisions,
city.names.en, registered_country) and ip-location-db's (country_code, state1, city).
"""
import ipaddress
import struct
import sys
import time

# ---- data section encoding ----

T_POINTER, T_STRING, T_DOUBLE, T_BYTES, T_U16, T_U32, T_MAP = 1, 2, 3, 4, 5, 6, 7
T_I32, T_U64, T_U128, T_ARRAY, T_BOOL = 8, 9, 10, 11, 14


def ctrl(kind, size):
    if size < 29:
        first, extra = size, b""
    elif size < 29 + 256:
        first, extra = 29, bytes([size - 29])
    elif size < 285 + 65536:
        first, extra = 30, struct.pack(">H", size - 285)
    else:
        first, extra = 31, struct.pack(">I", size - 65821)[1:]
    if kind <= 7:
        return bytes([(kind << 5) | first]) + extra
    return bytes([first, kind - 7]) + extra


def uint_bytes(v):
    out = b""
    while v:
        out = bytes([v & 0xFF]) + out
        v >>= 8
    return out


def enc(v, kind=None):
    if isinstance(v, bool):
        return ctrl(T_BOOL, 1 if v else 0)
    if isinstance(v, str):
        b = v.encode("utf-8")
        return ctrl(T_STRING, len(b)) + b
    if isinstance(v, dict):
        out = ctrl(T_MAP, len(v))
        for k, x in v.items():
            out += enc(k) + enc(x)
        return out
    if isinstance(v, list):
        out = ctrl(T_ARRAY, len(v))
        for x in v:
            out += enc(x)
        return out
    if isinstance(v, int):
        kind = kind or T_U32
        b = uint_bytes(v)
        return ctrl(kind, len(b)) + b
    raise TypeError(type(v))


class U16(int):
    pass


class U64(int):
    pass


def enc_meta(v):
    if isinstance(v, U16):
        return enc(int(v), T_U16)
    if isinstance(v, U64):
        return enc(int(v), T_U64)
    if isinstance(v, dict):
        out = ctrl(T_MAP, len(v))
        for k, x in v.items():
            out += enc(k) + enc_meta(x)
        return out
    return enc(v)


# ---- the tree ----


class Node:
    __slots__ = ("kids", "num")

    def __init__(self):
        self.kids = [None, None]  # Node, ("data", offset) or None
        self.num = -1


def insert(root, net, offset):
    if net.version == 4:  # ::a.b.c.d/(96 + n)
        value, plen = int(net.network_address), 96 + net.prefixlen
    else:
        value, plen = int(net.network_address), net.prefixlen
    node = root
    for i in range(plen):
        bit = (value >> (127 - i)) & 1
        if i == plen - 1:
            node.kids[bit] = ("data", offset)
            return
        if not isinstance(node.kids[bit], Node):
            node.kids[bit] = Node()
        node = node.kids[bit]


def write(path, networks):
    data = b""
    offsets = []
    for _, record in networks:
        offsets.append(len(data))
        data += enc(record)
    root = Node()
    for (cidr, _), off in zip(networks, offsets):
        insert(root, ipaddress.ip_network(cidr), off)
    order, queue = [], [root]
    while queue:
        n = queue.pop(0)
        n.num = len(order)
        order.append(n)
        queue.extend(k for k in n.kids if isinstance(k, Node))
    count = len(order)

    def rec(k):
        if isinstance(k, Node):
            return k.num
        if k is None:
            return count
        return count + 16 + k[1]

    tree = b"".join(struct.pack(">II", rec(n.kids[0]), rec(n.kids[1])) for n in order)
    meta = {
        "node_count": count,
        "record_size": U16(32),
        "ip_version": U16(6),
        "database_type": "Tally-Test-City",
        "languages": ["en"],
        "binary_format_major_version": U16(2),
        "binary_format_minor_version": U16(0),
        "build_epoch": U64(int(time.time())),
        "description": {"en": "tiny test database for tally's geo module"},
    }
    with open(path, "wb") as f:
        f.write(tree + b"\x00" * 16 + data + b"\xab\xcd\xefMaxMind.com" + enc_meta(meta))


NETWORKS = [
    ("8.8.8.0/24", {
        "country": {"iso_code": "US", "names": {"en": "United States"}},
        "subdivisions": [{"iso_code": "CA", "names": {"en": "California"}}],
        "city": {"names": {"en": "Mountain View", "de": "Mountain View"}},
    }),
    ("81.2.69.0/24", {
        "country": {"iso_code": "GB"},
        "subdivisions": [{"iso_code": "ENG"}, {"iso_code": "WSM"}],
        "city": {"names": {"en": "London"}},
    }),
    ("2001:db8::/32", {"registered_country": {"iso_code": "DE"}}),
    ("192.0.2.0/24", {"country_code": "fr", "state1": "\u00cele-de-France", "city": "Paris"}),
    ("198.51.100.0/24", {"country_code": "ZZ"}),
    ("203.0.113.0/24", {"country_code": "JP", "city": "\u00e9" * 120}),
]

if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: mmdb_write.py OUT.mmdb")
    write(sys.argv[1], NETWORKS)
