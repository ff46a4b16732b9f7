# cython: language_level=3, boundscheck=False, wraparound=False
"""The compiled twin of counter_cells.PyCells: 8-byte counters in a shared mapping.

`add` is one atomic fetch-and-add on the mapped cell, with the GIL held throughout:
no lock, no system call and no release of the GIL per counted answer. The add lands
in the shared page cache at once, so a process killed right after it loses nothing;
`flush` (msync) forces the cells to disk. Same cells and same counts as the
pure-Python class (tests/unit/server/ledger/test_counter_cells.py compares them).
"""

from libc.errno cimport errno
from libc.stdint cimport uint64_t
from posix.mman cimport (
    MAP_FAILED,
    MAP_SHARED,
    MS_SYNC,
    PROT_READ,
    PROT_WRITE,
    mmap,
    msync,
    munmap,
)

cdef extern from *:
    """
    static inline void cells_add(unsigned long long *cell, unsigned long long n) {
        __atomic_fetch_add(cell, n, __ATOMIC_RELAXED);
    }
    static inline unsigned long long cells_load(unsigned long long *cell) {
        return __atomic_load_n(cell, __ATOMIC_RELAXED);
    }
    static inline void cells_store(unsigned long long *cell, unsigned long long value) {
        __atomic_store_n(cell, value, __ATOMIC_RELAXED);
    }
    """
    void cells_add(unsigned long long *cell, unsigned long long n) nogil
    unsigned long long cells_load(unsigned long long *cell) nogil
    void cells_store(unsigned long long *cell, unsigned long long value) nogil


cdef class Cells:
    """`capacity` counters of the file open at `fd`, mapped shared; the fd stays the caller's."""

    cdef unsigned long long *_base
    cdef Py_ssize_t _capacity
    cdef size_t _length
    cdef bint _writable

    def __cinit__(self, int fd, Py_ssize_t capacity, bint writable):
        self._base = NULL
        if capacity < 1:
            raise ValueError("a counter file holds at least one cell")
        self._capacity = capacity
        self._length = <size_t>capacity * 8
        self._writable = writable
        cdef void *base = mmap(
            NULL, self._length, PROT_READ | (PROT_WRITE if writable else 0), MAP_SHARED, fd, 0
        )
        if base == MAP_FAILED:
            raise OSError(errno, "cannot map the counter file")
        self._base = <unsigned long long *>base

    def __dealloc__(self):
        if self._base != NULL:
            munmap(self._base, self._length)

    cdef inline unsigned long long *_cell(self, Py_ssize_t slot) except NULL:
        if self._base == NULL:
            raise ValueError("the counter file is closed")
        if slot < 0 or slot >= self._capacity:
            raise IndexError(f"cell {slot} is outside the counter file")
        return self._base + slot

    def add(self, Py_ssize_t slot, unsigned long long n):
        if not self._writable:
            raise ValueError("the counter file is mapped read-only")
        cells_add(self._cell(slot), n)

    def get(self, Py_ssize_t slot):
        return cells_load(self._cell(slot))

    def put(self, Py_ssize_t slot, unsigned long long value):
        if not self._writable:
            raise ValueError("the counter file is mapped read-only")
        cells_store(self._cell(slot), value)

    def flush(self):
        if self._base != NULL and self._writable and msync(self._base, self._length, MS_SYNC) != 0:
            raise OSError(errno, "cannot force the counter file to disk")

    def close(self):
        if self._base != NULL:
            munmap(self._base, self._length)
            self._base = NULL
