# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""A batch of LMDB lookups walked side by side over the mapped file (lmdb_pages.py).

LMDB's own `get` descends one key at a time: root, branch pages, leaf, a binary search
on each page, every step waiting for the cache line the step before named. Here each
lookup of a batch advances one step per round and asks the CPU to fetch the cache line
its next step needs; by the time the round comes back to it the line has arrived, so
the batch's waits overlap instead of adding up.

Read only, and only pages the caller's read transaction keeps alive (LMDB reuses a page
only once no reader can reach it). The page and node layout is LMDB 0.9's (mdb.c,
`MDB_page`, `MDB_node`) on a 64-bit little-endian machine; lmdb_pages.py checks the
file's magic and format version before using this. Anything the walk does not
recognise (a page of another kind, an offset outside its page, a value on overflow
pages, a key LMDB would refuse) answers None, and the caller asks LMDB instead: this
module may decline, never differ. tests/unit/server/responder/test_lmdb_pages.py and
tests/fuzz/test_lmdb_pages_fuzz.py compare it with LMDB's `get`.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport uint16_t, uint64_t
from libc.string cimport memcmp

cdef extern from *:
    """
    #define LMDB_PAGES_PREFETCH(p) __builtin_prefetch((const void *)(p), 0, 3)
    """
    void _prefetch "LMDB_PAGES_PREFETCH" (const void* p) noexcept nogil

cdef enum:
    _GROUP = 128  # lookups in flight at once: more than the CPU's outstanding misses
    _HEADER = 16  # sizeof(MDB_page) before its mp_ptrs
    _NODE = 8  # offsetof(MDB_node, mn_data)
    _BRANCH = 0x01  # P_BRANCH
    _LEAF = 0x02  # P_LEAF
    _LEAF2 = 0x20  # P_LEAF2 (DUPFIXED), never in a plain database
    _MAX_KEY = 511  # MDB_MAXKEYSIZE: LMDB refuses longer keys, and empty ones
    _MAX_DEPTH = 32  # far deeper than any tree a 64-bit map can hold
    # offsetof(MDB_meta, mm_txnid) after the page header: magic, version, address,
    # map size, the two MDB_db records, the last page
    _META_TXNID = _HEADER + 128

cdef enum:  # a lookup's state
    _WALKING = 0
    _FOUND = 1
    _ABSENT = 2
    _STRANGE = 3  # the walk met what it does not recognise: LMDB answers
    _BEYOND = 4  # a page past the mapping: the file has grown since it was mapped


cdef inline uint16_t _u16(const unsigned char* p) noexcept nogil:
    return (<const uint16_t*>p)[0]


cdef inline uint64_t _u64(const unsigned char* p) noexcept nogil:
    return (<const uint64_t*>p)[0]


cdef inline void _arrive(const unsigned char* page) noexcept nogil:
    # The header and the node offsets (a full branch page's run to ~270 bytes).
    _prefetch(page)
    _prefetch(page + 64)
    _prefetch(page + 128)
    _prefetch(page + 192)
    _prefetch(page + 256)


cdef class Pages:
    """The mapped file of one LMDB environment, read as pages of `psize` bytes."""

    cdef const unsigned char[::1] _mapped
    cdef Py_ssize_t _psize
    cdef uint64_t _pages

    def __init__(self, const unsigned char[::1] mapped, Py_ssize_t psize):
        if psize < 512 or psize > 65536 or psize & (psize - 1):
            raise ValueError(f"not an LMDB page size: {psize}")
        self._mapped = mapped
        self._psize = psize
        self._pages = <uint64_t>(mapped.shape[0] // psize)

    def release(self):
        """Let go of the mapping (the caller may then close it)."""
        self._mapped = None
        self._pages = 0

    def last_txn(self):
        """The id of the environment's last committed write transaction: the newer of
        the two meta pages' (LMDB writes the other one at each commit); -1 when the
        mapping lacks them. One aligned eight-octet read each, so never torn."""
        cdef const unsigned char* base
        cdef uint64_t first, second
        if self._pages < 2:
            return -1
        base = &self._mapped[0]
        first = _u64(base + _META_TXNID)
        second = _u64(base + self._psize + _META_TXNID)
        return first if first > second else second

    def read(self, uint64_t root, int depth, list keys):
        """The value of each of `keys` (bytes, or None where the tree has no such key)
        in the tree of `depth` levels whose root is page `root`; None where the walk
        declines (ask LMDB); False where a page lies past the mapping (map it again)."""
        cdef Py_ssize_t n = len(keys), start, m, j, child
        cdef Py_ssize_t psize = self._psize
        cdef uint64_t pages = self._pages
        cdef const unsigned char* base
        cdef const unsigned char* page[_GROUP]
        cdef const unsigned char* key[_GROUP]
        cdef Py_ssize_t key_size[_GROUP]
        cdef int low[_GROUP]
        cdef int high[_GROUP]
        cdef int middle[_GROUP]
        cdef int level[_GROUP]
        cdef int state[_GROUP]
        cdef bint arrived[_GROUP]
        cdef const unsigned char* node
        cdef const unsigned char* data
        cdef int walking, order, flags
        cdef Py_ssize_t lower, offset, common, node_key, size
        cdef uint64_t number
        cdef object item
        cdef list out = [None] * n
        if pages == 0 or depth < 1 or depth > _MAX_DEPTH:
            return None
        if root >= pages:
            return False
        base = &self._mapped[0]
        for j in range(n):
            item = keys[j]
            if not PyBytes_CheckExact(item) or not 0 < PyBytes_GET_SIZE(item) <= _MAX_KEY:
                return None
        start = 0
        while start < n:
            m = min(<Py_ssize_t>_GROUP, n - start)
            for j in range(m):
                item = keys[start + j]
                key[j] = <const unsigned char*>PyBytes_AS_STRING(item)
                key_size[j] = PyBytes_GET_SIZE(item)
                page[j] = base + root * psize
                level[j] = 1
                state[j] = _WALKING
                arrived[j] = True
                _arrive(page[j])
            walking = m
            while walking:
                for j in range(m):
                    if state[j] != _WALKING:
                        continue
                    if arrived[j]:
                        # A page's first step: check it is the page it should be, and
                        # the kind its level says; set up the binary search.
                        arrived[j] = False
                        flags = _u16(page[j] + 10)
                        lower = _u16(page[j] + 12)
                        if (
                            _u64(page[j]) != <uint64_t>(page[j] - base) // psize
                            or lower < _HEADER
                            or lower > psize
                            or flags & _LEAF2
                            or (flags & (_BRANCH | _LEAF)) != (_LEAF if level[j] == depth else _BRANCH)
                        ):
                            state[j] = _STRANGE
                            walking -= 1
                            continue
                        # A branch page's first key is never compared: it stands for
                        # everything below the second (mdb_node_search).
                        low[j] = 0 if flags & _LEAF else 1
                        high[j] = <int>((lower - _HEADER) >> 1) - 1
                        if low[j] > high[j]:
                            state[j] = _ABSENT if flags & _LEAF else _STRANGE  # an empty leaf: an empty tree
                            walking -= 1
                            continue
                        middle[j] = (low[j] + high[j]) >> 1
                        _prefetch(page[j] + _u16(page[j] + _HEADER + 2 * middle[j]))
                        continue
                    offset = _u16(page[j] + _HEADER + 2 * middle[j])
                    if offset < _HEADER or offset + _NODE > psize:
                        state[j] = _STRANGE
                        walking -= 1
                        continue
                    node = page[j] + offset
                    node_key = _u16(node + 6)
                    if offset + _NODE + node_key > psize:
                        state[j] = _STRANGE
                        walking -= 1
                        continue
                    # LMDB's default order (mdb_cmp_memn): bytes, then the shorter first.
                    common = node_key if node_key < key_size[j] else key_size[j]
                    order = memcmp(key[j], node + _NODE, common)
                    if order == 0:
                        order = (key_size[j] > node_key) - (key_size[j] < node_key)
                    if order > 0:
                        low[j] = middle[j] + 1
                    elif order < 0:
                        high[j] = middle[j] - 1
                    if order != 0 and low[j] <= high[j]:
                        middle[j] = (low[j] + high[j]) >> 1
                        _prefetch(page[j] + _u16(page[j] + _HEADER + 2 * middle[j]))
                        continue
                    if level[j] == depth:  # a leaf: the search ends here
                        if order != 0:
                            state[j] = _ABSENT
                        elif _u16(node + 4) != 0:  # F_BIGDATA, F_SUBDATA or F_DUPDATA
                            state[j] = _STRANGE
                        else:
                            page[j] = node  # kept for the value
                            state[j] = _FOUND
                        walking -= 1
                        continue
                    # A branch: down to the child whose range holds the key, the last
                    # whose first key is not above it (mdb_page_search_root).
                    child = middle[j] if order == 0 else high[j]
                    offset = _u16(page[j] + _HEADER + 2 * child)
                    if offset < _HEADER or offset + _NODE > psize:
                        state[j] = _STRANGE
                        walking -= 1
                        continue
                    node = page[j] + offset
                    number = (
                        <uint64_t>_u16(node)
                        | (<uint64_t>_u16(node + 2) << 16)
                        | (<uint64_t>_u16(node + 4) << 32)
                    )
                    if number >= pages:
                        state[j] = _BEYOND
                        walking -= 1
                        continue
                    page[j] = base + number * psize
                    level[j] += 1
                    arrived[j] = True
                    _arrive(page[j])
            for j in range(m):
                if state[j] == _FOUND:
                    node = page[j]
                    node_key = _u16(node + 6)
                    size = <Py_ssize_t>_u16(node) | (<Py_ssize_t>_u16(node + 2) << 16)
                    if (node - base) % psize + _NODE + node_key + size > psize:
                        return None
                    data = node + _NODE + node_key
                    out[start + j] = PyBytes_FromStringAndSize(<const char*>data, size)
                elif state[j] == _STRANGE:
                    return None
                elif state[j] == _BEYOND:
                    return False
            start += m
        return out
