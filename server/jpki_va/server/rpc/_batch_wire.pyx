# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""The compiled twin of batch_wire.py: CheckStream answers as wire bytes, in C.

Same bytes as the pure-Python module (tests/unit/server/rpc/test_batch_wire.py and
the fuzz target compare the two on every case they draw). Its entries:

- `results_bytes`: a list of Briefs and ItemErrors, as `batch_response` takes it.
- `packed_bytes`: a batch straight from the index's packed values (PackedBatch),
  decoded, given its status by the rule of `jpki_va.core.domain.status_rule` and
  encoded without a Python object per status; the pure-Python twin is
  `batch_wire.packed_response`.
- `check_bytes`: one key's value so, as unary Check's CheckResponse; the pure-Python
  twin is `batch_wire.py_check_response`.

- `plain_keys`: a serialized CheckBatchRequest's plain items (a kind_serial and
  nothing else) read straight from the bytes as record keys; the pure-Python twin is
  `pb.plain_kind_serial` on each parsed item, which also reads every other item.
  `plain_key` reads one serialized CheckRequest so (unary Check's usual request).

Anything outside 64-bit integers (times no index holds, huge sequence numbers) is
handed to the Python code (`fallback` per item; a packed batch answers None), so the
two never differ on what they accept.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_GET_SIZE
from libc.stdint cimport int64_t, uint64_t, uint8_t
from libc.stdlib cimport free, realloc
from libc.string cimport memcpy, memset

cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object, Py_ssize_t*) except NULL
    bint PyBytes_CheckExact(object)
    bint PyList_CheckExact(object)

# The five-byte varint range of batch_wire._spread, in seconds (1978 to 3058).
cdef int64_t _FIRST = 0x1000_0000
cdef int64_t _LAST = 0x8_0000_0000
cdef int64_t _MILLION = 1_000_000
# Seconds whose microseconds still fit an int64 (about 292,000 years either way).
cdef int64_t _SAFE_SECONDS = 9_000_000_000_000
cdef int _VALUE_SIZE = 32  # record_format._VALUE: <qqIHqBB
cdef int _KEY_SIZE = 21  # record_key: kind, 20-byte serial
cdef int _REVOKED = 2  # Status
cdef int _UNKNOWN = 3


cdef struct Buf:
    uint8_t* data
    Py_ssize_t size
    Py_ssize_t cap
    bint owned  # data is the heap's (`_release` frees it), else the caller's stack


cdef int _reserve(Buf* b, Py_ssize_t more) except -1:
    cdef Py_ssize_t cap
    cdef uint8_t* grown
    if b.size + more <= b.cap:
        return 0
    cap = b.cap * 2 if b.cap else 4096
    while cap < b.size + more:
        cap *= 2
    grown = <uint8_t*>realloc(b.data if b.owned else NULL, cap)
    if grown == NULL:
        raise MemoryError()
    if not b.owned and b.size:  # outgrew the stack it started on
        memcpy(grown, b.data, b.size)
    b.data = grown
    b.cap = cap
    b.owned = True
    return 0


cdef inline void _release(Buf* b) noexcept:
    if b.owned:
        free(b.data)


cdef inline int _byte(Buf* b, uint8_t value) except -1:
    _reserve(b, 1)
    b.data[b.size] = value
    b.size += 1
    return 0


cdef inline int _raw(Buf* b, const uint8_t* data, Py_ssize_t n) except -1:
    _reserve(b, n)
    memcpy(b.data + b.size, data, n)
    b.size += n
    return 0


cdef inline int _varint(Buf* b, uint64_t value) except -1:
    _reserve(b, 10)
    while value > 0x7F:
        b.data[b.size] = <uint8_t>((value & 0x7F) | 0x80)
        b.size += 1
        value >>= 7
    b.data[b.size] = <uint8_t>value
    b.size += 1
    return 0


cdef inline int _varint_size(uint64_t value) noexcept:
    cdef int n = 1
    while value > 0x7F:
        value >>= 7
        n += 1
    return n


cdef int _delimited_from(Buf* b, uint8_t tag, Buf* body) except -1:
    _byte(b, tag)
    _varint(b, <uint64_t>body.size)
    _raw(b, body.data, body.size)
    return 0


cdef inline int _delimited(Buf* b, uint8_t tag, const uint8_t* data, Py_ssize_t n) except -1:
    _byte(b, tag)
    _varint(b, <uint64_t>n)
    _raw(b, data, n)
    return 0


cdef int _stamp(Buf* b, uint8_t tag, int64_t micros) except -1:
    """A Timestamp field (present even when zero) from microseconds since the epoch."""
    cdef int64_t seconds = micros // _MILLION  # floor, as Python's divmod
    cdef int64_t micro = micros - seconds * _MILLION
    cdef int64_t spread
    cdef int n = 0
    cdef uint8_t body[24]
    cdef uint64_t value
    cdef int i
    if micro == 0 and _FIRST <= seconds < _LAST:
        # C literals: Cython makes a Python int of any literal past a C int, and then
        # the whole expression Python arithmetic (two objects per timestamp).
        spread = (
            <int64_t>0x8080_8080
            | (seconds & 0x7F)
            | ((seconds << 1) & 0x7F00)
            | ((seconds << 2) & 0x7F_0000)
            | ((seconds << 3) & 0x7F00_0000)
            | ((seconds << 4) & <int64_t>0x7F_0000_0000)
        )
        _reserve(b, 8)
        b.data[b.size] = tag
        b.data[b.size + 1] = 6
        b.data[b.size + 2] = 8
        for i in range(5):
            b.data[b.size + 3 + i] = <uint8_t>((spread >> (8 * i)) & 0xFF)
        b.size += 8
        return 0
    if seconds:
        body[n] = 0x08
        n += 1
        value = <uint64_t>seconds
        while value > 0x7F:
            body[n] = <uint8_t>((value & 0x7F) | 0x80)
            n += 1
            value >>= 7
        body[n] = <uint8_t>value
        n += 1
    if micro:
        body[n] = 0x10
        n += 1
        value = <uint64_t>(micro * 1000)
        while value > 0x7F:
            body[n] = <uint8_t>((value & 0x7F) | 0x80)
            n += 1
            value >>= 7
        body[n] = <uint8_t>value
        n += 1
    _byte(b, tag)
    _byte(b, <uint8_t>n)
    _raw(b, body, n)
    return 0


cdef int _tail(Buf* b, int64_t as_of, uint64_t sequence) except -1:
    _stamp(b, 0x4A, as_of)
    if sequence:
        _byte(b, 0x50)
        _varint(b, sequence)
    return 0


cdef int _revocation(Buf* b, int64_t lost_at, uint64_t cause, uint64_t reason) except -1:
    cdef Buf body = _empty()
    try:
        _stamp(&body, 0x0A, lost_at)
        if cause:
            _byte(&body, 0x10)
            _varint(&body, cause)
        if reason:
            _byte(&body, 0x18)
            _varint(&body, reason)
        _delimited_from(b, 0x32, &body)
    finally:
        _release(&body)
    return 0


cdef int _result(Buf* out, Buf* status) except -1:
    """A `results` entry holding the CertificateStatus in `status`."""
    cdef Py_ssize_t inner = 1 + _varint_size(<uint64_t>status.size) + status.size
    _byte(out, 0x0A)
    _varint(out, <uint64_t>inner)
    _byte(out, 0x0A)
    _varint(out, <uint64_t>status.size)
    _raw(out, status.data, status.size)
    return 0


cdef int _serial(Buf* b, const uint8_t* raw, Py_ssize_t n) except -1:
    """The serial field from big-endian bytes, leading zeros dropped (one zero kept)."""
    cdef Py_ssize_t start = 0
    while start < n - 1 and raw[start] == 0:
        start += 1
    _delimited(b, 0x12, raw + start, n - start)
    return 0


# Briefs and ItemErrors ---------------------------------------------------------------

cdef bint _int64(object value, int64_t* out):
    """value as an int64; False when it does not fit (the caller falls back)."""
    try:
        out[0] = value
    except OverflowError:
        return False
    return True


cdef bint _uint64(object value, uint64_t* out):
    """value as its varint: int64 two's complement for negatives, as protobuf writes;
    False beyond 64 bits."""
    cdef int64_t signed
    try:
        signed = value
        out[0] = <uint64_t>signed
        return True
    except OverflowError:
        pass
    try:
        out[0] = value
    except OverflowError:
        return False
    return True


cdef bint _brief(Buf* status, tuple brief) except -1:
    """One Brief's CertificateStatus into `status`; False: leave it to the Python code."""
    cdef object kind = <object>PyTuple_GET_ITEM(brief, 0)
    cdef object serial = <object>PyTuple_GET_ITEM(brief, 1)
    cdef int code = <object>PyTuple_GET_ITEM(brief, 2)
    cdef object record = <object>PyTuple_GET_ITEM(brief, 5)
    cdef int64_t as_of, not_before, not_after, lost_at
    cdef uint64_t sequence, cause, reason, kind_value
    cdef bytes raw, key_id, partition
    cdef object lost
    if not _int64(<object>PyTuple_GET_ITEM(brief, 3), &as_of):
        return False
    if not _uint64(<object>PyTuple_GET_ITEM(brief, 4), &sequence):
        return False
    if kind is not None:
        if not _uint64(kind, &kind_value):
            return False
        _byte(status, 0x08)
        _varint(status, kind_value)
    raw = serial.to_bytes((serial.bit_length() + 7) // 8 or 1, "big")
    _delimited(status, 0x12, <const uint8_t*>PyBytes_AS_STRING(raw), PyBytes_GET_SIZE(raw))
    _byte(status, 0x18)
    _varint(status, <uint64_t><int64_t>code)
    if record is not None:
        if not _int64(record[0], &not_before) or not _int64(record[1], &not_after):
            return False
        lost = record[4]
        _stamp(status, 0x22, not_before)
        _stamp(status, 0x2A, not_after)
        if code == _REVOKED and lost is not None:
            if not _int64(lost, &lost_at):
                return False
            if not _uint64(record[5], &cause) or not _uint64(record[6], &reason):
                return False
            _revocation(status, lost_at, cause, reason)
        partition = (<str>record[2]).encode()
        if PyBytes_GET_SIZE(partition):
            _delimited(
                status,
                0x3A,
                <const uint8_t*>PyBytes_AS_STRING(partition),
                PyBytes_GET_SIZE(partition),
            )
        key_id = record[3]
        if PyBytes_GET_SIZE(key_id):
            _delimited(
                status, 0x42, <const uint8_t*>PyBytes_AS_STRING(key_id), PyBytes_GET_SIZE(key_id)
            )
    _tail(status, as_of, sequence)
    return True


cdef bint _item_error(Buf* out, Buf* body, object error) except -1:
    """An ItemError's `results` entry; False: leave it to the Python code."""
    cdef Py_ssize_t n
    cdef const char* text = PyUnicode_AsUTF8AndSize(error.text, &n)
    cdef uint64_t code
    if not _uint64(error.code, &code):
        return False
    _delimited(body, 0x12, <const uint8_t*>text, n)
    if code:
        _byte(body, 0x18)
        _varint(body, code)
    _delimited_from(out, 0x0A, body)
    return True


cdef int _item(Buf* out, Buf* scratch, object item, object item_error_type,
               object fallback) except -1:
    """One Brief's or ItemError's `results` entry; `fallback(item)` gives the bytes of
    one this code leaves to Python."""
    cdef bytes done
    scratch.size = 0
    if type(item) is item_error_type:
        if _item_error(out, scratch, item):
            return 0
    elif _brief(scratch, <tuple>item):
        _result(out, scratch)
        return 0
    done = fallback(item)
    _raw(out, <const uint8_t*>PyBytes_AS_STRING(done), PyBytes_GET_SIZE(done))
    return 0


cdef inline Buf _empty() noexcept:
    cdef Buf b
    b.data = NULL
    b.size = 0
    b.cap = 0
    b.owned = False
    return b


cdef inline Buf _on_stack(uint8_t* data, Py_ssize_t cap) noexcept:
    """A buffer that starts in the caller's `data` (moved to the heap should it grow):
    a batch of one needs no allocation."""
    cdef Buf b
    b.data = data
    b.size = 0
    b.cap = cap
    b.owned = False
    return b


def results_bytes(list results, object item_error_type, object fallback):
    """batch_wire.batch_response: a CheckBatchResponse of Briefs and ItemErrors.

    `fallback(item)` gives the bytes of an item this code leaves to Python.
    """
    cdef Buf out = _empty()
    cdef Buf scratch = _empty()
    cdef Py_ssize_t i
    try:
        for i in range(PyList_GET_SIZE(results)):
            _item(&out, &scratch, <object>PyList_GET_ITEM(results, i), item_error_type, fallback)
        return PyBytes_FromStringAndSize(<char*>out.data, out.size)
    finally:
        _release(&out)
        _release(&scratch)


# Packed index values -----------------------------------------------------------------

cdef inline int64_t _le64(const uint8_t* p) noexcept:
    cdef uint64_t v = 0
    cdef int i
    for i in range(8):
        v |= (<uint64_t>p[i]) << (8 * i)
    return <int64_t>v


cdef inline int _status_rule(int64_t when, int64_t not_before, int64_t not_after, bint lost,
                             int64_t lost_at) noexcept:
    """jpki_va.core.domain.status_rule on microseconds (Status values)."""
    if lost and lost_at <= when:
        return 2  # REVOKED
    if when < not_before:
        return 5  # NOT_YET_VALID
    if when > not_after:
        return 4  # EXPIRED
    return 1  # GOOD


cdef inline void _count(long* counts, uint8_t* hit, int* seen, int* nseen, int label) noexcept:
    """One more answer of label code `label` in `packed_bytes`' tally."""
    if not hit[label]:
        hit[label] = 1
        counts[label] = 0
        seen[nseen[0]] = label
        nseen[0] += 1
    counts[label] += 1


cdef int _packed_status(Buf* status, object key, object value, list key_ids, int64_t when,
                        Buf* tail) except -2:
    """One key's CertificateStatus from its packed index value (None: unknown) written
    to `status`, `tail` (`_tail`) last; its label code (`status * 256 + cause`, cause 0
    unless revoked), or -1 when the value is beyond what this code encodes exactly."""
    cdef const uint8_t* v
    cdef const uint8_t* k
    cdef int64_t not_before, not_after, revoked_at, lost_at
    cdef unsigned int partition
    cdef unsigned int ordinal
    cdef uint8_t cause, reason
    cdef int code, label
    cdef char digits[16]
    cdef int ndigits
    cdef Py_ssize_t size
    cdef bytes key_id
    if not PyBytes_CheckExact(key) or PyBytes_GET_SIZE(key) != _KEY_SIZE:
        raise ValueError("a record key is 21 bytes")
    k = <const uint8_t*>PyBytes_AS_STRING(key)
    _byte(status, 0x08)
    _varint(status, k[0])
    _serial(status, k + 1, _KEY_SIZE - 1)
    if value is None:
        _byte(status, 0x18)
        _byte(status, _UNKNOWN)
        label = _UNKNOWN * 256
    else:
        if not PyBytes_CheckExact(value) or PyBytes_GET_SIZE(value) != _VALUE_SIZE:
            return -1  # the Python twin raises struct.error for it
        v = <const uint8_t*>PyBytes_AS_STRING(value)
        not_before = _le64(v)
        not_after = _le64(v + 8)
        partition = v[16] | (v[17] << 8) | (v[18] << 16) | (<unsigned int>v[19] << 24)
        ordinal = v[20] | (v[21] << 8)
        revoked_at = _le64(v + 22)
        cause = v[30]
        reason = v[31]
        if (
            not -_SAFE_SECONDS < not_before < _SAFE_SECONDS
            or not -_SAFE_SECONDS < not_after < _SAFE_SECONDS
            or (cause and not -_SAFE_SECONDS < revoked_at < _SAFE_SECONDS)
        ):
            return -1
        if ordinal >= PyList_GET_SIZE(key_ids):
            raise IndexError("list index out of range")
        lost_at = revoked_at * _MILLION
        code = _status_rule(when, not_before * _MILLION, not_after * _MILLION, cause != 0, lost_at)
        _byte(status, 0x18)
        _byte(status, <uint8_t>code)
        _stamp(status, 0x22, not_before * _MILLION)
        _stamp(status, 0x2A, not_after * _MILLION)
        label = code * 256
        if code == _REVOKED and cause:
            _revocation(status, lost_at, cause, reason)
            label += cause
        # partition_text: at least six digits, zero-padded
        ndigits = 0
        while partition or ndigits < 6:
            digits[15 - ndigits] = <char>(48 + partition % 10)
            partition //= 10
            ndigits += 1
        _delimited(status, 0x3A, <const uint8_t*>digits + 16 - ndigits, ndigits)
        key_id = <bytes>PyList_GET_ITEM(key_ids, ordinal)
        size = PyBytes_GET_SIZE(key_id)
        if size:
            _delimited(status, 0x42, <const uint8_t*>PyBytes_AS_STRING(key_id), size)
    _raw(status, tail.data, tail.size)
    return label


# A status is about 120 octets, and its tail 20: a batch of one is written on the stack.
cdef enum:
    _STACK = 512


def packed_bytes(object slots, list keys, list values, list key_ids, int64_t when,
                 object sequence, object item_error_type, object fallback, dict tally):
    """batch_wire.packed_response in C; None when a value is beyond what this code
    encodes exactly (then the Python twin answers the batch).

    `slots` is None (each key in order) or a list of, per result, an int (the
    position of its key and value) or a Brief or ItemError (encoded as
    `results_bytes` would). `tally` gains, per answer from a value, the count of its
    label code (`status * 256 + cause`, cause 0 unless revoked).
    """
    cdef uint8_t out_start[_STACK]
    cdef uint8_t scratch_start[_STACK]
    cdef uint8_t tail_start[_STACK]
    cdef Buf out = _on_stack(out_start, _STACK)
    cdef Buf scratch = _on_stack(scratch_start, _STACK)
    cdef Buf tail = _on_stack(tail_start, _STACK)
    cdef Py_ssize_t i, n, position
    cdef object slot
    cdef uint64_t seq
    cdef int label
    # The tally by label code: `counts` holds a code's count once `hit` marks it, and
    # `seen` lists the codes hit, in order. Only `hit` (1.5 kB) is cleared, and only
    # `seen` is read back: clearing and scanning every code (12 kB, 1,536 of them) was
    # most of the cost of a batch of one (unary Check), measured in instructions.
    cdef long counts[6 * 256]
    cdef uint8_t hit[6 * 256]
    cdef int seen[6 * 256]
    cdef int nseen = 0
    if not _uint64(sequence, &seq):
        return None
    memset(hit, 0, sizeof(hit))
    if PyList_GET_SIZE(values) != PyList_GET_SIZE(keys):
        raise ValueError("a value for each key")
    n = PyList_GET_SIZE(keys) if slots is None else len(slots)
    try:
        _tail(&tail, when, seq)  # one instant and index for the whole batch
        for i in range(n):
            if slots is None:
                position = i
            else:
                slot = slots[i]
                if type(slot) is not int:
                    _item(&out, &scratch, slot, item_error_type, fallback)
                    continue
                position = slot
                if not 0 <= position < PyList_GET_SIZE(keys):
                    raise IndexError("list index out of range")
            scratch.size = 0
            label = _packed_status(
                &scratch,
                <object>PyList_GET_ITEM(keys, position),
                <object>PyList_GET_ITEM(values, position),
                key_ids,
                when,
                &tail,
            )
            if label < 0:
                return None
            _count(counts, hit, seen, &nseen, label)
            _result(&out, &scratch)
        for i in range(nseen):
            label = seen[i]
            tally[label] = tally.get(label, 0) + counts[label]
        return PyBytes_FromStringAndSize(<char*>out.data, out.size)
    finally:
        _release(&out)
        _release(&scratch)
        _release(&tail)


def check_bytes(object key, object value, list key_ids, int64_t when, object sequence):
    """batch_wire.check_response in C, for one key and its packed value (None:
    unknown): (a serialized CheckResponse, the answer's label code), or None when the
    value is beyond what this code encodes exactly (then the Python twin answers).

    The CertificateStatus is `packed_bytes`' one result; written under
    CheckResponse.status (field 1) rather than CheckResult.status in a `results`
    entry, with no allocation but the answer's bytes."""
    cdef uint8_t out_start[_STACK]
    cdef uint8_t status_start[_STACK]
    cdef uint8_t tail_start[_STACK]
    cdef Buf out = _on_stack(out_start, _STACK)
    cdef Buf status = _on_stack(status_start, _STACK)
    cdef Buf tail = _on_stack(tail_start, _STACK)
    cdef uint64_t seq
    cdef int label
    if not _uint64(sequence, &seq):
        return None
    try:
        _tail(&tail, when, seq)
        label = _packed_status(&status, key, value, key_ids, when, &tail)
        if label < 0:
            return None
        _delimited_from(&out, 0x0A, &status)
        return PyBytes_FromStringAndSize(<char*>out.data, out.size), label
    finally:
        _release(&out)
        _release(&status)
        _release(&tail)


# Requests -----------------------------------------------------------------------------

cdef inline Py_ssize_t _length(const uint8_t* p, Py_ssize_t end, Py_ssize_t* at) noexcept:
    """A varint length at p[at] (at moves past it); -1 when malformed or past `end`."""
    cdef uint64_t value = 0
    cdef int shift = 0
    while at[0] < end and shift < 35:
        value |= (<uint64_t>(p[at[0]] & 0x7F)) << shift
        at[0] += 1
        if not p[at[0] - 1] & 0x80:
            if <Py_ssize_t>value > end - at[0]:
                return -1
            return <Py_ssize_t>value
        shift += 7
    return -1


cdef inline uint8_t _plain_key(const uint8_t* p, Py_ssize_t size, uint8_t* key) noexcept:
    """The kind (1 to 4) of the serialized CheckRequest p[0:size] if it is plain, its
    record key written to `key` (21 octets); 0 when it is not plain or its serial is
    zero. Only the form protobuf itself writes is read: exactly
    `cert { kind_serial { kind serial } }`, fields in order, every length one octet."""
    cdef Py_ssize_t serial_size, i
    cdef bint zero = True
    # CheckRequest { cert (1) = CertRef { kind_serial (1) = KindSerial { 1, 2 } } }
    if not (
        size >= 4
        and p[0] == 0x0A
        and p[1] == size - 2
        and p[2] == 0x0A
        and p[3] == size - 4
        and size - 4 >= 4
        and p[4] == 0x08
        and 1 <= p[5] <= 4
        and p[6] == 0x12
        and p[7] == size - 8
        and size - 8 <= 20
    ):
        return 0
    serial_size = size - 8
    for i in range(serial_size):
        if p[8 + i]:
            zero = False
            break
    if zero:
        return 0
    key[0] = p[5]
    for i in range(20 - serial_size):
        key[1 + i] = 0
    memcpy(key + 21 - serial_size, p + 8, serial_size)
    return p[5]


def plain_key(bytes raw):
    """The record key of a serialized CheckRequest that is plain (as `plain_keys` reads
    each item), or None for any other request."""
    cdef uint8_t key[21]
    if not _plain_key(<const uint8_t*>PyBytes_AS_STRING(raw), PyBytes_GET_SIZE(raw), key):
        return None
    return PyBytes_FromStringAndSize(<char*>key, 21)


def plain_key_or(object parse, bytes raw):
    """`plain_key(raw)` when the request is plain, else `parse(raw)`: unary Check's
    deserializer as one call for the usual request (batch_wire `_CheckReader.or_else`)."""
    cdef uint8_t key[21]
    if not _plain_key(<const uint8_t*>PyBytes_AS_STRING(raw), PyBytes_GET_SIZE(raw), key):
        return parse(raw)
    return PyBytes_FromStringAndSize(<char*>key, 21)


def plain_keys(bytes raw, list kind_counts):
    """The record key of each request of a serialized CheckBatchRequest, or None for a
    request that is not plain (then the parsed message answers for it).

    Plain, as `pb.plain_kind_serial` has it: a kind_serial of a known kind (1 to 4) and
    a nonzero serial of at most 20 octets, no `as_of`, in the form `_plain_key` reads;
    any other encoding of the same request is None, never a different key.
    `kind_counts[kind]` gains the number of plain requests of each kind.
    """
    cdef const uint8_t* p = <const uint8_t*>PyBytes_AS_STRING(raw)
    cdef Py_ssize_t end = PyBytes_GET_SIZE(raw)
    cdef Py_ssize_t at = 0, size, i
    cdef uint8_t kind
    cdef uint8_t key[21]
    cdef list keys = []
    cdef long counts[5]
    for i in range(5):
        counts[i] = 0
    while at < end:
        if p[at] != 0x0A:  # CheckBatchRequest.requests; anything else: parse it in Python
            return None
        at += 1
        size = _length(p, end, &at)
        if size < 0:
            return None
        kind = _plain_key(p + at, size, key)
        if kind:
            keys.append(PyBytes_FromStringAndSize(<char*>key, 21))
            counts[kind] += 1
        else:
            keys.append(None)
        at += size
    for i in range(1, 5):
        kind_counts[i] += counts[i]
    return keys
