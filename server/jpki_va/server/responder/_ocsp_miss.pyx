# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""The compiled twin of an OCSP cache miss's byte work (responder/ocsp_miss.py).

Same results as the pure-Python references (tests/unit/server/responder/test_ocsp_miss.py
and tests/fuzz/test_ocsp_miss_fuzz.py compare the two on every case they draw). Two
entries:

- `usual_request`: `pki/ocsp_wire.usual_request`, the usual request (one SHA-1 CertID
  and nothing else) read by position. Its CertId and OcspRequest (named tuples) are
  made without running their Python constructors.
- `served`: `preproduced.py_served`, a pre-produced entry judged against what the
  certificate's packed index value says now (the status rule of
  `jpki_va.core.domain.status_rule`) and, when it is right, framed as the response
  up to its certs field (`ocsp_wire.ResponseWriter.body`).

Anything outside 64-bit microseconds, a value of another size or a torn entry is
handed to the reference (`fallback`), so the two never differ on what they accept.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport int64_t, uint64_t, uint8_t
from libc.string cimport memcmp, memcpy

cdef extern from "Python.h":
    object _PyLong_FromByteArray(const unsigned char*, size_t, int, int)

cdef const char* _SHA1_WITH_NULL = b"\x30\x09\x06\x05\x2b\x0e\x03\x02\x1a\x05\x00"
cdef const char* _SHA1_BARE = b"\x30\x07\x06\x05\x2b\x0e\x03\x02\x1a"
# responseStatus successful, then the responseType id-pkix-ocsp-basic.
cdef const char* _SUCCESSFUL = b"\x0a\x01\x00"
cdef const char* _BASIC = b"\x06\x09\x2b\x06\x01\x05\x05\x07\x30\x01\x01"
cdef Py_ssize_t _BASIC_SIZE = 11

cdef int _HEAD = 32  # preproduced._HEAD: >BqqBqBBHH
cdef int _FORMAT = 1
cdef int _VALUE_SIZE = 32  # record_format._VALUE: <qqIHqBB
cdef int64_t _MILLION = 1_000_000
# Seconds whose microseconds still fit an int64 (about 292,000 years either way).
cdef int64_t _SAFE_SECONDS = 9_000_000_000_000
# Instants (µs) far enough inside int64 that adding a margin cannot overflow.
cdef int64_t _SAFE_MICROS = 1 << 62

cdef int _GOOD = 1  # Status
cdef int _REVOKED = 2
cdef int _UNKNOWN = 3
cdef int _EXPIRED = 4
cdef int _NOT_YET_VALID = 5


def usual_request(object cert_id_type, object request_type, bytes data not None):
    """`ocsp_wire.usual_request(data)`, its CertId and OcspRequest of the types given."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    cdef const uint8_t* d = <const uint8_t*>PyBytes_AS_STRING(data)
    cdef Py_ssize_t names, keys, number, size, significant
    cdef int i
    # OCSPRequest, tbsRequest, requestList, Request and CertID: each the rest.
    if not 56 <= n < 0x82:
        return None
    for i in range(5):
        if d[2 * i] != 0x30 or d[2 * i + 1] != n - 2 * (i + 1):
            return None
    if memcmp(d + 10, _SHA1_WITH_NULL, 11) == 0:
        names = 21
    elif memcmp(d + 10, _SHA1_BARE, 9) == 0:
        names = 19
    else:
        return None
    keys = names + 22
    number = names + 44
    if (
        n < number + 3
        or d[names] != 0x04 or d[names + 1] != 20
        or d[keys] != 0x04 or d[keys + 1] != 20
        or d[number] != 0x02
        or d[number + 1] != n - number - 2
    ):
        return None
    size = n - number - 2
    # Negative or not minimal (the reference words those), or out of range.
    if d[number + 2] & 0x80:
        return None
    if d[number + 2] == 0:
        if size == 1 or not d[number + 3] & 0x80:
            return None  # zero, or a leading zero octet too many
        significant = size - 1
    else:
        significant = size
    if significant > 20:  # MAX_SERIAL: at most 20 octets
        return None
    serial = _PyLong_FromByteArray(d + number + 2, <size_t>size, 0, 0)
    cert_id = tuple.__new__(
        cert_id_type,
        (data[8:], "sha1", data[names + 2 : keys], data[keys + 2 : number], serial),
    )
    return tuple.__new__(request_type, ((cert_id,), data[4:], None))


cdef inline int64_t _be(const uint8_t* p, int n) noexcept:
    cdef uint64_t value = 0
    cdef int i
    for i in range(n):
        value = (value << 8) | p[i]
    return <int64_t>value


cdef inline int64_t _le(const uint8_t* p, int n) noexcept:
    cdef uint64_t value = 0
    cdef int i
    for i in range(n - 1, -1, -1):
        value = (value << 8) | p[i]
    return <int64_t>value


cdef inline Py_ssize_t _length_size(Py_ssize_t n) noexcept:
    """The octets of a DER length of n (der.length)."""
    cdef Py_ssize_t octets = 0
    if n < 0x80:
        return 1
    while n:
        n >>= 8
        octets += 1
    return 1 + octets


cdef inline Py_ssize_t _head(uint8_t* out, uint8_t tag, Py_ssize_t n) noexcept:
    """A tag and the DER length of n at `out`; how many octets it wrote."""
    cdef Py_ssize_t size = _length_size(n)
    cdef Py_ssize_t i
    out[0] = tag
    if size == 1:
        out[1] = <uint8_t>n
    else:
        out[1] = <uint8_t>(0x80 | (size - 1))
        for i in range(size - 1):
            out[size - i] = <uint8_t>((n >> (8 * i)) & 0xFF)
    return 1 + size


cdef inline Py_ssize_t _put(
    uint8_t* out, Py_ssize_t pos, const void* data, Py_ssize_t n
) noexcept:
    """`n` octets of `data` at out[pos]; the position after them."""
    memcpy(out + pos, data, n)
    return pos + n


cdef inline bint _equal_at(
    const uint8_t* data, Py_ssize_t n, Py_ssize_t at, const uint8_t* want, Py_ssize_t size
) noexcept:
    """data[at:at + size] == want, with Python's slicing past the end."""
    if size == 0:
        return True
    if at >= n or n - at < size:
        return False
    return memcmp(data + at, want, size) == 0


def served(
    object fallback,
    bytes raw not None,
    object value,
    object when,
    bytes cert_id not None,
    object writer,
    object certs_size,
    object margin,
):
    """`preproduced.py_served(raw, value, when, cert_id, writer, certs_size, margin)`."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(raw)
    cdef const uint8_t* r = <const uint8_t*>PyBytes_AS_STRING(raw)
    cdef const uint8_t* v
    cdef const uint8_t* tbs
    cdef int64_t now, this_update, next_update, lost, pad, certs_octets
    cdef int64_t not_before, not_after, revoked_at, lost_at = -1
    cdef int status, cause = 0, reason = 0, code
    cdef Py_ssize_t size, tbs_size, sig_size, start, at, total, pos
    cdef bytes responder_id, algorithm, body
    cdef uint8_t* out
    cdef uint8_t heads[5][12]
    cdef Py_ssize_t head_sizes[5]
    try:
        now = when
        pad = margin
        certs_octets = certs_size
    except (OverflowError, TypeError):
        return fallback(raw, value, when, cert_id, writer, certs_size, margin)
    if (
        not -_SAFE_MICROS < now < _SAFE_MICROS
        or not 0 <= pad < _SAFE_MICROS
        or not 0 <= certs_octets < _SAFE_MICROS
    ):
        return fallback(raw, value, when, cert_id, writer, certs_size, margin)
    # The basis the index gives now (preproduced.basis_of_value).
    if value is None:
        status = _UNKNOWN
    else:
        if type(value) is not bytes or PyBytes_GET_SIZE(value) != _VALUE_SIZE:
            return fallback(raw, value, when, cert_id, writer, certs_size, margin)
        v = <const uint8_t*>PyBytes_AS_STRING(value)
        not_before = _le(v, 8)
        not_after = _le(v + 8, 8)
        revoked_at = _le(v + 22, 8)
        cause = v[30]
        if (
            not -_SAFE_SECONDS <= not_before <= _SAFE_SECONDS
            or not -_SAFE_SECONDS <= not_after <= _SAFE_SECONDS
            or not -_SAFE_SECONDS <= revoked_at <= _SAFE_SECONDS
        ):
            return fallback(raw, value, when, cert_id, writer, certs_size, margin)
        if cause:
            reason = v[31]
            lost_at = revoked_at * _MILLION
        if cause and lost_at <= now:
            status = _REVOKED
        elif now < not_before * _MILLION:
            status = _NOT_YET_VALID
        elif now > not_after * _MILLION:
            status = _EXPIRED
        else:
            status = _GOOD
    # The entry (PreproducedEntry.decode), read after the value as the reference reads
    # them, and its four checks (PreproducedEntry.serves).
    if n < _HEAD or r[0] != _FORMAT:
        return None  # another format (made by another version): signed again
    this_update = _be(r + 1, 8)
    next_update = _be(r + 9, 8)
    lost = _be(r + 18, 8)
    at = <Py_ssize_t>_be(r + 28, 2)
    size = <Py_ssize_t>_be(r + 30, 2)
    tbs_size = min(size, n - _HEAD)
    sig_size = n - _HEAD - tbs_size
    tbs = r + _HEAD
    if r[17] != status or lost != lost_at or r[26] != cause or r[27] != reason:
        return None
    if not (this_update <= now and now + pad < next_update):
        return None
    responder_id = writer.responder_id
    algorithm = writer.algorithm
    if tbs_size < 2:
        return fallback(raw, value, when, cert_id, writer, certs_size, margin)
    start = 2 if tbs[1] < 0x80 else 2 + (tbs[1] & 0x7F)
    if not _equal_at(
        tbs, tbs_size, start,
        <const uint8_t*>PyBytes_AS_STRING(responder_id), PyBytes_GET_SIZE(responder_id),
    ):
        return None
    if not _equal_at(
        tbs, tbs_size, at, <const uint8_t*>PyBytes_AS_STRING(cert_id), PyBytes_GET_SIZE(cert_id)
    ):
        return None
    # The response up to its certs field (ResponseWriter.body), inside out.
    total = sig_size + 1  # the BIT STRING's unused-bits octet first
    head_sizes[4] = _head(heads[4], 0x03, total)
    total += tbs_size + PyBytes_GET_SIZE(algorithm) + head_sizes[4] + certs_octets
    head_sizes[3] = _head(heads[3], 0x30, total)  # BasicOCSPResponse
    total += head_sizes[3]
    head_sizes[2] = _head(heads[2], 0x04, total)  # responseBytes.response
    total += head_sizes[2] + _BASIC_SIZE
    head_sizes[1] = _head(heads[1], 0x30, total)  # ResponseBytes
    total += head_sizes[1]
    head_sizes[0] = _head(heads[0], 0xA0, total)  # [0] responseBytes
    total += head_sizes[0] + 3
    body = PyBytes_FromStringAndSize(NULL, _length_size(total) + 1 + total - certs_octets)
    out = <uint8_t*>PyBytes_AS_STRING(body)
    pos = _head(out, 0x30, total)
    pos = _put(out, pos, _SUCCESSFUL, 3)
    pos = _put(out, pos, heads[0], head_sizes[0])
    pos = _put(out, pos, heads[1], head_sizes[1])
    pos = _put(out, pos, _BASIC, _BASIC_SIZE)
    pos = _put(out, pos, heads[2], head_sizes[2])
    pos = _put(out, pos, heads[3], head_sizes[3])
    pos = _put(out, pos, tbs, tbs_size)
    pos = _put(out, pos, PyBytes_AS_STRING(algorithm), PyBytes_GET_SIZE(algorithm))
    pos = _put(out, pos, heads[4], head_sizes[4])
    out[pos] = 0  # the BIT STRING's unused bits
    _put(out, pos + 1, tbs + tbs_size, sig_size)
    code = status * 256 + cause if status == _REVOKED else status * 256
    return (
        body,
        this_update,
        next_update,
        raw[_HEAD + tbs_size :],
        (status, lost_at, cause, reason),
        code,
    )
