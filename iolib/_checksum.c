/* The Internet checksum's sum (RFC 1071) in C: the optional compiled
 * helper of iolib/tcp/checksum.py, which holds the pure-Python function
 * it must match (THREADLIB_PURE=1 chooses that one).
 *
 * ones_sum(data[, start[, end]]) -> int: the sum of data[start:end] read
 * as big-endian 16-bit words (an odd last byte padded with a zero),
 * reduced modulo 0xFFFF, in [0, 0xFFFE].  `data` is any contiguous
 * buffer; `start` must be even relative to the checksummed region.
 *
 * parse_tcp4(packet, local, checksum_ok) -> None | int | tuple: the user-
 * level stack's per-packet fast path in one call (an IPv4 packet without
 * options carrying a whole TCP segment: shape, destination, both
 * checksums, the TCP header and the usual timestamp option). The pure-
 * Python _parse_tcp4 of iolib/tcp/segment.py is its specification.
 *
 * It only computes: it keeps no state, allocates nothing but the result
 * and never blocks.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* Sum of the region read as little-endian 32-bit words (the tail as
 * 16-bit words, then a byte), modulo 0xFFFF.  Since 2**16 = 1 (mod
 * 0xFFFF), a 32-bit word counts as its two 16-bit halves, and a
 * little-endian 16-bit word is its big-endian twin times 2**8: the
 * caller multiplies by 2**8 once more to get the big-endian sum. */
static uint64_t
sum_le(const unsigned char *p, Py_ssize_t n)
{
    uint64_t acc = 0;
    while (n >= 4) {
        /* At most 2**20 words between reductions: no overflow for any n. */
        Py_ssize_t words = n / 4;
        if (words > (1 << 20))
            words = 1 << 20;
        n -= words * 4;
        uint64_t a0 = 0, a1 = 0;
        Py_ssize_t i = 0;
        for (; i + 1 < words; i += 2) {
            uint32_t w0, w1;
            memcpy(&w0, p, 4);
            memcpy(&w1, p + 4, 4);
            a0 += w0;
            a1 += w1;
            p += 8;
        }
        if (i < words) {
            uint32_t w0;
            memcpy(&w0, p, 4);
            a0 += w0;
            p += 4;
        }
        acc = (acc + a0 % 0xFFFF + a1 % 0xFFFF) % 0xFFFF;
    }
    if (n >= 2) {
        acc += (uint64_t)p[0] | ((uint64_t)p[1] << 8);
        p += 2;
        n -= 2;
    }
    if (n)
        acc += p[0];  /* the odd byte is the high byte of a big-endian word */
    return acc % 0xFFFF;
}

static PyObject *
ones_sum(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs < 1 || nargs > 3) {
        PyErr_Format(PyExc_TypeError, "ones_sum() takes 1 to 3 arguments (%zd given)", nargs);
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    Py_ssize_t start = 0, end = view.len;
    if (nargs > 1) {
        start = PyLong_AsSsize_t(args[1]);
        if (start == -1 && PyErr_Occurred())
            goto fail;
    }
    if (nargs > 2) {
        end = PyLong_AsSsize_t(args[2]);
        if (end == -1 && PyErr_Occurred())
            goto fail;
    }
    if (start < 0 || end < start || end > view.len) {
        PyErr_Format(PyExc_ValueError, "ones_sum(): region [%zd:%zd] is not within the %zd-byte buffer",
                     start, end, view.len);
        goto fail;
    }
    uint64_t s = sum_le((const unsigned char *)view.buf + start, end - start);
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLong((unsigned long)((s << 8) % 0xFFFF));
fail:
    PyBuffer_Release(&view);
    return NULL;
}

/* ones_sum's value for n bytes at p (big-endian words, mod 0xFFFF). */
static uint64_t
be_sum(const unsigned char *p, Py_ssize_t n)
{
    return (sum_le(p, n) << 8) % 0xFFFF;
}

static unsigned
get16(const unsigned char *p)
{
    return ((unsigned)p[0] << 8) | p[1];
}

static unsigned long
get32(const unsigned char *p)
{
    return ((unsigned long)p[0] << 24) | ((unsigned long)p[1] << 16) | ((unsigned long)p[2] << 8) | p[3];
}

/* See iolib/tcp/segment.py's _parse_tcp4, which this must match. */
static PyObject *
parse_tcp4(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError, "parse_tcp4() takes 3 arguments (%zd given)", nargs);
        return NULL;
    }
    PyObject *packet = args[0];
    if (!PyBytes_Check(packet)) {
        PyErr_SetString(PyExc_TypeError, "parse_tcp4(): packet must be bytes");
        return NULL;
    }
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(packet);
    Py_ssize_t n = PyBytes_GET_SIZE(packet);
    if (n < 40 || p[0] != 0x45)
        Py_RETURN_NONE;
    Py_ssize_t total = (Py_ssize_t)get16(p + 2);
    unsigned frag = get16(p + 6);
    if (p[9] != 6 || (frag & 0x3FFF) || total < 40 || total > n)
        Py_RETURN_NONE;
    PyObject *dst = PyBytes_FromStringAndSize((const char *)p + 16, 4);
    if (dst == NULL)
        return NULL;
    int local = PySequence_Contains(args[1], dst);
    if (local <= 0) {
        Py_DECREF(dst);
        return local < 0 ? NULL : PyLong_FromLong(1);
    }
    int trusted = PyObject_IsTrue(args[2]);
    if (trusted < 0) {
        Py_DECREF(dst);
        return NULL;
    }
    if (be_sum(p, 20) != 0
        || (!trusted && (be_sum(p, total) + be_sum(p + 12, 8) + 6 + (uint64_t)total - 20) % 0xFFFF != 0)) {
        Py_DECREF(dst);
        return PyLong_FromLong(2);
    }
    const unsigned char *t = p + 20;
    Py_ssize_t hlen = (Py_ssize_t)(t[12] >> 4) * 4;
    if (hlen < 20 || 20 + hlen > total) {
        Py_DECREF(dst);
        return PyLong_FromLong(3);
    }
    PyObject *tsval, *tsecr;
    if (hlen == 32 && t[20] == 1 && t[21] == 1 && t[22] == 8 && t[23] == 10) {
        tsval = PyLong_FromUnsignedLong(get32(t + 24));
        tsecr = PyLong_FromUnsignedLong(get32(t + 28));
    } else {
        tsval = Py_NewRef(Py_None);
        tsecr = Py_NewRef(Py_None);
    }
    /* N steals: every reference made above goes into the tuple (or is
     * released by Py_BuildValue when it fails). */
    return Py_BuildValue("(NNinIIkkIIINnNN)",
                         PyBytes_FromStringAndSize((const char *)p + 12, 4), dst, (int)p[8], total,
                         get16(t), get16(t + 2), get32(t + 4), get32(t + 8), (unsigned)t[13], get16(t + 14),
                         get16(t + 18),
                         PyBytes_FromStringAndSize((const char *)t + hlen, total - 20 - hlen), hlen,
                         tsval, tsecr);
}

static PyMethodDef methods[] = {
    {"ones_sum", (PyCFunction)(void (*)(void))ones_sum, METH_FASTCALL,
     "ones_sum(data, start=0, end=len(data)) -> int\n\n"
     "The sum of data[start:end] as big-endian 16-bit words (an odd tail\n"
     "padded with a zero byte), modulo 0xFFFF."},
    {"parse_tcp4", (PyCFunction)(void (*)(void))parse_tcp4, METH_FASTCALL,
     "parse_tcp4(packet, local, checksum_ok) -> None | int | tuple\n\n"
     "The stack's IPv4/TCP fast path in one call (see iolib/tcp/segment.py)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "iolib._checksum",
    "The Internet checksum's sum in C (see iolib/tcp/checksum.py).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__checksum(void)
{
    return PyModule_Create(&module_def);
}
