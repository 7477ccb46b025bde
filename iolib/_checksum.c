/* The Internet checksum's sum (RFC 1071) in C: the optional compiled
 * helper of iolib/tcp/checksum.py, which holds the pure-Python function
 * it must match (THREADLIB_PURE=1 chooses that one).
 *
 * ones_sum(data[, start[, end]]) -> int: the sum of data[start:end] read
 * as big-endian 16-bit words (an odd last byte padded with a zero),
 * reduced modulo 0xFFFF, in [0, 0xFFFE].  `data` is any contiguous
 * buffer; `start` must be even relative to the checksummed region.
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

static PyMethodDef methods[] = {
    {"ones_sum", (PyCFunction)(void (*)(void))ones_sum, METH_FASTCALL,
     "ones_sum(data, start=0, end=len(data)) -> int\n\n"
     "The sum of data[start:end] as big-endian 16-bit words (an odd tail\n"
     "padded with a zero byte), modulo 0xFFFF."},
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
