/* threadlib._kernel._speedups: the scheduler's run loop, compiled.
 *
 * What it is for: Scheduler._run_ready (scheduler.py) is the one loop every
 * step of every thread passes through. This is the same loop in C, so that a
 * step costs a generator resume and a dict lookup rather than thirty
 * bytecodes; it is used when this module is built and THREADLIB_PURE is not
 * set. scheduler.py stays the specification: this file must do exactly what
 * _run_ready does, in the same order, with the same exceptions, and must
 * never do anything else. Every rare path (a thread ending, a context
 * rebase, an unknown call, an interrupted wait, a worker's failure) calls
 * back into the Scheduler's own Python methods, so that no behaviour exists
 * only here.
 *
 * It also holds sockio's socket fast paths (sock_recv, sock_recv_into,
 * sock_send): socket.socket's recv/recv_into/send for the non-blocking
 * sockets sockio makes, with the same results and the same exceptions
 * (BlockingIOError at EAGAIN, the errno's OSError subclass otherwise), minus
 * what a non-blocking call never needs: argument-tuple parsing, timeout
 * handling and letting go of the GIL around a call that cannot block. The
 * fd is asked of the socket at every call (fileno() is -1 once it is
 * closed), never remembered: a remembered number could name another file
 * by the next call.
 *
 * The loop serves the commonest waits itself: a Park whose handler is the
 * scheduler's own _sys_park, and a WaitRead whose handler is the IO
 * worker's own _wait_read on an fd it has a record for, with no interrupt
 * pending and no cancel scope (the handlers' bodies for that case, written
 * out; every other case calls the handler).
 *
 * And record/replay's recording socket calls (rec_recv, rec_recv_into,
 * rec_send): the same calls, each also appending its record to the log
 * buffer a recording gives (threadlib/replay/sockets.py is their
 * specification).
 *
 * And record/replay's log reader, LogCore: the primitives and the
 * per-record decoders of threadlib/replay/log.py's _ReaderCore (their
 * specification), the base class of LogReader.
 *
 * And sockio's Stream.recv (a method returning RecvCall, the awaitable
 * its generator would be), for a recv with no timeout on the default
 * socket layer, and Stream.sendall's first send (DONE when the socket took
 * it all); sockio.py's recv and sendall are their specifications and
 * their fallbacks.
 *
 * And fdio's per-fd record, FdWaiters: fdio._FdWaiters with its
 * on_events (the callback the poller runs for every event on a watched
 * fd) in C; the same fields, readable and writable from Python.
 *
 * And the poll step (poll): Scheduler._poll when the poller is the
 * EpollPoller, with the poller's own poll written out (epoll_wait and the
 * callbacks of the fds that fired).
 *
 * What it must never do: block anywhere but in the poll step's epoll_wait
 * (where the Python _poll blocks), read a clock but through the
 * scheduler's clock object as _poll does, keep a reference to a thread or
 * a scheduler after it returns, or run with anything but the GIL held
 * outside that wait.
 *
 * Plain C API rather than Cython: one loop of ~150 lines needs no build
 * dependency beyond the compiler, and the exact CPython calls it makes
 * (PyIter_Send resumes a generator without raising StopIteration at its end)
 * are visible in the source.
 */
#include "_speedups.h"
#include <structmember.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <stdint.h>
#include <string.h>

/* Set once by configure(): the objects the loop compares against. */
static PyObject *yield_singleton;      /* syscalls.YIELD */
static PyObject *pending_interrupt;    /* scheduler._PendingInterrupt */
static PyObject *mark_retrieved;       /* threads.mark_retrieved */
static PyTypeObject *thread_type;      /* threads.Thread */
/* Set by configure_scheduler(): run_ready writes sched.current through its
 * slot when sched is one of these. */
static PyTypeObject *scheduler_type;   /* scheduler.Scheduler */
static Py_ssize_t off_current;
/* Set by configure_park(): a Park served by the scheduler's own _sys_park
 * (its handler unchanged) is served here without calling it. */
static PyTypeObject *park_type;        /* syscalls.Park */
static PyTypeObject *waitqueue_type;   /* waitqueue.WaitQueue */
static PyObject *sys_park_func;        /* Scheduler._sys_park, the function */
static Py_ssize_t off_park_queue, off_wq_sched, off_wq_waiters;
/* And a WaitRead served by IOWorker._wait_read (fdio.py), its handler
 * unchanged: served here when the fd's record is the compiled FdWaiters. */
static PyTypeObject *waitread_type;    /* syscalls.WaitRead */
static PyObject *wait_read_func;       /* fdio.IOWorker._wait_read, the function */
static Py_ssize_t off_waitread_fd;
static PyObject *one;                  /* the int 1 */
static PyObject *s_fds;
static int wait_read_inline(PyObject *handler, PyObject *pending, PyObject *append, PyObject *t,
                            PyObject *sc);

/* Byte offsets of Thread's __slots__ _coro, _value and _exc: read and written
 * directly, as the interpreter's own slot access does. */
static Py_ssize_t off_coro, off_value, off_exc, off_wait, off_scope;

static PyObject *s_ready, *s_handlers, *s_pending, *s_base, *s_twin, *s_current, *s_finish,
    *s_rebase, *s_unknown_call, *s_interrupted_wait, *s_worker_failed, *s_popleft, *s_append,
    *s_throw, *s_exc, *s_value, *s_coro_slot, *s_value_slot, *s_exc_slot, *s_fileno;

/* A slot of a Thread: a new reference, or NULL with AttributeError when it
 * is unset (as Python's own access would raise). */
static PyObject *
slot_get(PyObject *t, Py_ssize_t off, PyObject *name)
{
    PyObject *v = *(PyObject **)((char *)t + off);
    if (v == NULL) {
        PyErr_SetObject(PyExc_AttributeError, name);
        return NULL;
    }
    return Py_NewRef(v);
}

static void
slot_set(PyObject *t, Py_ssize_t off, PyObject *v)
{
    PyObject **slot = (PyObject **)((char *)t + off);
    PyObject *old = *slot;
    *slot = Py_NewRef(v);
    Py_XDECREF(old);
}

/* The raised exception, normalized, with its traceback attached; the error
 * indicator is cleared. */
PyObject *
take_exception(void)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb != NULL) {
        PyException_SetTraceback(value, tb);
    }
    Py_XDECREF(type);
    Py_XDECREF(tb);
    return value;
}

PyObject *
call_method(PyObject *obj, PyObject *name, PyObject *a, PyObject *b, PyObject *c, Py_ssize_t n)
{
    PyObject *args[4] = {obj, a, b, c};
    return PyObject_VectorcallMethod(name, args, (size_t)(n + 1) | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                     NULL);
}

/* The step of t ended the thread: _finish it, as _run_ready's except
 * clauses do. Returns 1 to go on, 0 when the loop must stop with `*stop` set
 * (KeyboardInterrupt, SystemExit), -1 on error. */
static int
thread_ended(PyObject *sched, PyObject *t, PyObject *retval, PyObject *exc, PyObject **stop)
{
    PyObject *r = call_method(sched, s_finish, t, retval ? retval : Py_None, exc ? exc : Py_None, 3);
    if (r == NULL) {
        return -1;
    }
    Py_DECREF(r);
    if (exc != NULL && (PyObject_TypeCheck(exc, (PyTypeObject *)PyExc_KeyboardInterrupt) ||
                        PyObject_TypeCheck(exc, (PyTypeObject *)PyExc_SystemExit))) {
        r = PyObject_CallOneArg(mark_retrieved, t);
        if (r == NULL) {
            return -1;
        }
        Py_DECREF(r);
        *stop = Py_NewRef(exc);
        return 0;
    }
    return 1;
}

/* Scheduler._sys_park for its common case, written out: ``handler`` is the
 * scheduler's own _sys_park, no interrupt is pending and t has no cancel
 * scope (else 0: call the handler). Does what _sys_park does there: the
 * queue learns its scheduler, t joins its waiters, t waits in sc. Returns 1
 * when served, 0 when the handler must be called, -1 on error (nothing
 * done). */
static int
park_inline(PyObject *sched, PyObject *handler, PyObject *pending, PyObject *t, PyObject *sc)
{
    if (park_type == NULL || !Py_IS_TYPE(sc, park_type) || !PyMethod_Check(handler) ||
        PyMethod_GET_FUNCTION(handler) != sys_park_func || PyMethod_GET_SELF(handler) != sched ||
        PyDict_GET_SIZE(pending) || *(PyObject **)((char *)t + off_scope) != Py_None) {
        return 0;
    }
    PyObject *queue = *(PyObject **)((char *)sc + off_park_queue);
    if (queue == NULL || !Py_IS_TYPE(queue, waitqueue_type)) {
        return 0;
    }
    PyObject *waiters = *(PyObject **)((char *)queue + off_wq_waiters);
    if (waiters == NULL) {
        return 0;
    }
    Py_INCREF(waiters);
    PyObject *r = PyObject_CallMethodOneArg(waiters, s_append, t);
    Py_DECREF(waiters);
    if (r == NULL) {
        return -1;
    }
    Py_DECREF(r);
    /* _sys_park sets _sched first; nothing reads it in between. */
    PyObject **sched_slot = (PyObject **)((char *)queue + off_wq_sched);
    if (*sched_slot != sched) {
        Py_XSETREF(*sched_slot, Py_NewRef(sched));
    }
    slot_set(t, off_wait, sc);
    return 1;
}

static PyObject *
run_ready(PyObject *module, PyObject *sched)
{
    PyObject *ready = NULL, *popleft = NULL, *append = NULL, *handlers = NULL, *pending = NULL,
             *base = NULL, *twin = NULL, *stop = NULL, *result = NULL;
    PyObject *t = NULL, *sc = NULL;

    if ((ready = PyObject_GetAttr(sched, s_ready)) == NULL ||
        (popleft = PyObject_GetAttr(ready, s_popleft)) == NULL ||
        (append = PyObject_GetAttr(ready, s_append)) == NULL ||
        (handlers = PyObject_GetAttr(sched, s_handlers)) == NULL ||
        (pending = PyObject_GetAttr(sched, s_pending)) == NULL ||
        (base = PyObject_GetAttr(sched, s_base)) == NULL ||
        (twin = PyObject_GetAttr(sched, s_twin)) == NULL) {
        goto done;
    }
    if (!PyDict_CheckExact(handlers) || !PyDict_CheckExact(pending)) {
        PyErr_SetString(PyExc_TypeError, "run_ready: the scheduler's _handlers and _pending must be dicts");
        goto done;
    }
    /* sched.current is written at every step: through its slot, not a
     * generic setattr (a ninth of a sleep(0) switch). */
    const int current_slot = scheduler_type != NULL && PyObject_TypeCheck(sched, scheduler_type);

    for (;;) {
        Py_ssize_t queued = PyObject_Length(ready);
        if (queued < 0) {
            goto done;
        }
        if (queued == 0) {
            break;
        }
        t = PyObject_CallNoArgs(popleft);
        if (t == NULL) {
            goto done;
        }
        if (current_slot) {
            slot_set(sched, off_current, t);
        }
        else if (PyObject_SetAttr(sched, s_current, t) < 0) {
            goto done;
        }
        if (!PyObject_TypeCheck(t, thread_type)) {
            PyErr_Format(PyExc_TypeError, "run_ready: %R on the ready queue is not a Thread", t);
            goto done;
        }

        PyObject *coro = slot_get(t, off_coro, s_coro_slot);
        if (coro == NULL) {
            goto done;
        }
        PyObject *exc = slot_get(t, off_exc, s_exc_slot);
        if (exc == NULL) {
            Py_DECREF(coro);
            goto done;
        }
        PyObject *retval = NULL, *raised = NULL;
        int ended = 0;
        if (exc == Py_None) {
            PyObject *value = slot_get(t, off_value, s_value_slot);
            if (value == NULL) {
                Py_DECREF(coro);
                Py_DECREF(exc);
                goto done;
            }
            PySendResult how = PyIter_Send(coro, value, &sc);
            Py_DECREF(value);
            if (how == PYGEN_RETURN) {
                retval = sc;
                sc = NULL;
                ended = 1;
            }
            else if (how == PYGEN_ERROR) {
                sc = NULL;
                raised = take_exception();
                ended = 1;
            }
        }
        else {
            slot_set(t, off_exc, Py_None);
            sc = call_method(coro, s_throw, exc, NULL, NULL, 1);
            if (sc == NULL) {
                raised = take_exception();
                ended = 1;
                if (PyObject_TypeCheck(raised, (PyTypeObject *)PyExc_StopIteration)) {
                    retval = PyObject_GetAttr(raised, s_value);
                    Py_CLEAR(raised);
                    if (retval == NULL) {
                        Py_DECREF(coro);
                        Py_DECREF(exc);
                        goto done;
                    }
                }
            }
        }
        Py_DECREF(coro);
        Py_DECREF(exc);

        if (ended) {
            int go_on = thread_ended(sched, t, retval, raised, &stop);
            Py_XDECREF(retval);
            Py_XDECREF(raised);
            if (go_on < 0) {
                goto done;
            }
            if (go_on == 0) {
                Py_CLEAR(t);
                break;
            }
            int wrote = PyObject_RichCompareBool(base, twin, Py_NE);
            if (wrote < 0) {
                goto done;
            }
            if (wrote) {
                result = call_method(sched, s_rebase, Py_None, Py_None, NULL, 2);
                goto done;
            }
            Py_CLEAR(t);
            continue;
        }

        /* O(1) while they share one mapping: the step wrote nothing. */
        int wrote = PyObject_RichCompareBool(base, twin, Py_NE);
        if (wrote < 0) {
            goto done;
        }
        if (wrote) {
            result = call_method(sched, s_rebase, t, sc, NULL, 2);
            goto done;
        }
        if (sc == yield_singleton) {
            slot_set(t, off_value, Py_None);
            if (PyDict_GET_SIZE(pending)) {
                PyObject *interrupt = PyDict_GetItemWithError(pending, t);
                if (interrupt != NULL) {
                    slot_set(t, off_exc, interrupt);
                    if (PyDict_DelItem(pending, t) < 0) {
                        goto done;
                    }
                }
                else if (PyErr_Occurred()) {
                    goto done;
                }
            }
            PyObject *r = PyObject_CallOneArg(append, t);
            if (r == NULL) {
                goto done;
            }
            Py_DECREF(r);
            Py_CLEAR(sc);
            Py_CLEAR(t);
            continue;
        }
        PyObject *handler = PyDict_GetItemWithError(handlers, (PyObject *)Py_TYPE(sc));
        PyObject *r;
        if (handler == NULL) {
            PyErr_Clear();
            r = call_method(sched, s_unknown_call, t, sc, NULL, 2);
        }
        else {
            Py_INCREF(handler);
            int parked = park_inline(sched, handler, pending, t, sc);
            if (parked == 0) {
                parked = wait_read_inline(handler, pending, append, t, sc);
            }
            PyObject *args[2] = {t, sc};
            r = parked > 0 ? Py_NewRef(Py_None) : parked < 0 ? NULL : PyObject_Vectorcall(handler, args, 2, NULL);
            Py_DECREF(handler);
            if (r == NULL) {
                PyObject *failure = take_exception();
                if (PyObject_TypeCheck(failure, (PyTypeObject *)pending_interrupt)) {
                    PyObject *inner = PyObject_GetAttr(failure, s_exc);
                    r = inner ? call_method(sched, s_interrupted_wait, t, sc, inner, 3) : NULL;
                    Py_XDECREF(inner);
                }
                else {
                    r = call_method(sched, s_worker_failed, t, sc, failure, 3);
                }
                Py_DECREF(failure);
            }
        }
        if (r == NULL) {
            goto done;
        }
        Py_DECREF(r);
        Py_CLEAR(sc);
        Py_CLEAR(t);
    }
    if (current_slot) {
        slot_set(sched, off_current, Py_None);
    }
    else if (PyObject_SetAttr(sched, s_current, Py_None) < 0) {
        goto done;
    }
    if (stop != NULL) {
        PyErr_SetObject((PyObject *)Py_TYPE(stop), stop);
        goto done;
    }
    result = Py_NewRef(Py_False);

done:
    Py_XDECREF(t);
    Py_XDECREF(sc);
    Py_XDECREF(stop);
    Py_XDECREF(ready);
    Py_XDECREF(popleft);
    Py_XDECREF(append);
    Py_XDECREF(handlers);
    Py_XDECREF(pending);
    Py_XDECREF(base);
    Py_XDECREF(twin);
    return result;
}

/* -- sockio's fast paths ------------------------------------------------ */

static PyObject *socket_type;          /* socket.socket */

static int
socket_fd(PyObject *sock)
{
    if (!PyObject_TypeCheck(sock, (PyTypeObject *)socket_type)) {
        PyErr_Format(PyExc_TypeError, "expected a socket.socket, got %.100s", Py_TYPE(sock)->tp_name);
        return -1;
    }
    PyObject *number = PyObject_CallMethodNoArgs(sock, s_fileno);
    if (number == NULL) {
        return -1;
    }
    long fd = PyLong_AsLong(number);
    Py_DECREF(number);
    if (fd == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (fd < 0 || fd > INT_MAX) {
        /* A closed socket.socket says -1: the call fails as the socket
         * module's own would. */
        errno = EBADF;
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    return (int)fd;
}

/* recv or send once, again after a signal (PEP 475, as the socket module
 * does): the count, -1 with errno set, or -2 when a signal handler raised. */
static ssize_t
transfer(int fd, void *buf, size_t len, int sending)
{
    for (;;) {
        ssize_t n = sending ? send(fd, buf, len, 0) : recv(fd, buf, len, 0);
        if (n >= 0 || errno != EINTR) {
            return n;
        }
        if (PyErr_CheckSignals() < 0) {
            return -2;
        }
    }
}

/* A size argument: the count, or -1 with an exception (the socket
 * module's own ValueError text for a negative one). */
static Py_ssize_t
buffer_size(PyObject *arg, const char *negative)
{
    Py_ssize_t size = PyLong_AsSsize_t(arg);
    if (size < 0 && !PyErr_Occurred()) {
        PyErr_SetString(PyExc_ValueError, negative);
    }
    return size < 0 ? -1 : size;
}

/* -- record/replay: the recording socket calls ------------------------------
 *
 * rec_recv(log, sock, size), rec_recv_into(log, sock, buffer, nbytes) and
 * rec_send(log, sock, data): sock_recv, sock_recv_into and sock_send, each
 * appending its SOCK record to the bytearray `log` exactly as
 * threadlib/replay/sockets.py's _record_recv, _record_recv_into and
 * _record_send do (that file is the specification of the record layout):
 *
 *   5 | op | fd (varint) | 0 | result             the call succeeded
 *   5 | op | fd (varint) | 1 | 5 | errno (varint) | 0   it failed (OSError)
 *
 * where a recv's result is the bytes (varint length, then them) and a send's
 * is the count (varint), the CRC-32 of the bytes taken (4 bytes, little
 * endian, zlib's CRC) and their first 32 bytes (a length byte, then them).
 * A call interrupted by a signal handler's exception writes nothing, as the
 * Python layer does. They never flush: the recorder's Python side does, at
 * the next wait or poll. */

#define REC_SOCK 5
#define REC_RECV 2
#define REC_RECV_INTO 3
#define REC_SEND 4
#define REC_OSERROR 5
#define REC_PREFIX 32

/* zlib's CRC-32, eight bytes a step ("slicing by 8": crc_table[k][b] is the
 * CRC of byte b followed by k zero bytes); a 64-byte send costs a third of
 * the byte-at-a-time loop. */
static uint32_t crc_table[8][256];

static void
crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) {
            c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        }
        crc_table[0][i] = c;
    }
    for (int k = 1; k < 8; k++) {
        for (uint32_t i = 0; i < 256; i++) {
            uint32_t c = crc_table[k - 1][i];
            crc_table[k][i] = (c >> 8) ^ crc_table[0][c & 0xFF];
        }
    }
}

static uint32_t
crc32_of(const unsigned char *p, Py_ssize_t n)
{
    uint32_t c = 0xFFFFFFFFu;
    while (n >= 8) {
        uint32_t one = c ^ ((uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24));
        uint32_t two = (uint32_t)p[4] | ((uint32_t)p[5] << 8) | ((uint32_t)p[6] << 16) | ((uint32_t)p[7] << 24);
        c = crc_table[7][one & 0xFF] ^ crc_table[6][(one >> 8) & 0xFF] ^ crc_table[5][(one >> 16) & 0xFF] ^
            crc_table[4][one >> 24] ^ crc_table[3][two & 0xFF] ^ crc_table[2][(two >> 8) & 0xFF] ^
            crc_table[1][(two >> 16) & 0xFF] ^ crc_table[0][two >> 24];
        p += 8;
        n -= 8;
    }
    while (n-- > 0) {
        c = crc_table[0][(c ^ *p++) & 0xFF] ^ (c >> 8);
    }
    return c ^ 0xFFFFFFFFu;
}

/* Append n bytes to the bytearray: in place while its allocation has room
 * (log_clear keeps the allocation when the writer flushes), else grown by
 * half again (bytearray's own growth is an eighth: most of a log's bytes
 * would be copied eight times on the way to a flush). Growing by a half
 * leaves it more than half full, so that the Python appends in between
 * (bytearray.append, +=) never shrink it. A bytearray with buffer exports
 * takes the ordinary path, which refuses to resize it. */
static int
log_put(PyObject *log, const void *data, Py_ssize_t n)
{
    PyByteArrayObject *b = (PyByteArrayObject *)log;
    Py_ssize_t old = Py_SIZE(log);
    Py_ssize_t room = b->ob_alloc - (b->ob_start - b->ob_bytes);
    if (b->ob_exports > 0 || old + n + 1 > room) {
        Py_ssize_t want = old + n;
        Py_ssize_t grown = b->ob_exports > 0 ? want : want + want / 2 + 64;
        if (PyByteArray_Resize(log, grown) < 0) {
            return -1;
        }
        Py_SET_SIZE(log, old);
    }
    char *at = b->ob_start;   /* not PyByteArray_AS_STRING: that is a shared "" while the size is 0 */
    memcpy(at + old, data, (size_t)n);
    Py_SET_SIZE(log, old + n);
    at[old + n] = '\0';   /* bytearray's trailing NUL */
    return 0;
}

/* log_clear(log): empty the bytearray, keeping its allocation (del log[:]
 * gives it back, and the next records regrow it from nothing). */
static PyObject *
log_clear(PyObject *module, PyObject *log)
{
    if (!PyByteArray_CheckExact(log)) {
        PyErr_SetString(PyExc_TypeError, "log_clear(bytearray)");
        return NULL;
    }
    PyByteArrayObject *b = (PyByteArrayObject *)log;
    if (b->ob_exports > 0 || b->ob_bytes == NULL) {
        if (PyByteArray_Resize(log, 0) < 0) {
            return NULL;
        }
        Py_RETURN_NONE;
    }
    b->ob_start = b->ob_bytes;
    Py_SET_SIZE(log, 0);
    b->ob_bytes[0] = '\0';
    Py_RETURN_NONE;
}

/* log_append(log, data): data appended by log_put (RecordingClock's records). */
static PyObject *
log_append(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyByteArray_CheckExact(args[0]) || !PyBytes_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError, "log_append(bytearray, bytes)");
        return NULL;
    }
    if (log_put(args[0], PyBytes_AS_STRING(args[1]), PyBytes_GET_SIZE(args[1])) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static int
varint(unsigned char *out, unsigned long long n)
{
    int k = 0;
    while (n >= 0x80) {
        out[k++] = (unsigned char)((n & 0x7F) | 0x80);
        n >>= 7;
    }
    out[k++] = (unsigned char)n;
    return k;
}

/* The record's head: kind, op, fd and the ok (0) or failed (1) byte. */
static int
log_head(PyObject *log, int op, int fd, int failed)
{
    unsigned char head[16];
    int k = 0;
    head[k++] = REC_SOCK;
    head[k++] = (unsigned char)op;
    k += varint(head + k, fd >= 0 ? (unsigned long long)fd : 0);
    head[k++] = (unsigned char)failed;
    return log_put(log, head, k);
}

/* A failed call's record, then the OSError for errno `err` raised. */
static PyObject *
log_failure(PyObject *log, int op, int fd, int err)
{
    unsigned char tail[16];
    int k = 0;
    tail[k++] = REC_OSERROR;
    k += varint(tail + k, (unsigned long long)err);
    tail[k++] = 0;   /* the usual text, left out */
    if (log_head(log, op, fd, 1) < 0 || log_put(log, tail, k) < 0) {
        return NULL;
    }
    errno = err;
    return PyErr_SetFromErrno(PyExc_OSError);
}

static int
log_bytes(PyObject *log, const char *data, Py_ssize_t n)
{
    unsigned char len[10];
    int k = varint(len, (unsigned long long)n);
    if (log_put(log, len, k) < 0) {
        return -1;
    }
    return log_put(log, data, n);
}

static int
check_log(PyObject *log)
{
    if (!PyByteArray_CheckExact(log)) {
        PyErr_SetString(PyExc_TypeError, "the recording's log buffer must be a bytearray");
        return -1;
    }
    return 0;
}

/* socket_fd for a recording call: a closed socket's EBADF is recorded
 * (as the Python layer records every OSError); -1 if it failed. */
static int
rec_socket_fd(PyObject *log, int op, PyObject *sock)
{
    int fd = socket_fd(sock);
    if (fd < 0 && PyErr_ExceptionMatches(PyExc_OSError)) {
        PyErr_Clear();
        Py_XDECREF(log_failure(log, op, -1, EBADF));
    }
    return fd;
}

/* A send's result: the count, the CRC-32 of the bytes taken, their start. */
static int
log_sent(PyObject *log, int fd, const void *buf, Py_ssize_t n)
{
    unsigned char tail[24];
    int k = varint(tail, (unsigned long long)n);
    uint32_t crc = crc32_of(buf, n);
    tail[k++] = (unsigned char)(crc & 0xFF);
    tail[k++] = (unsigned char)((crc >> 8) & 0xFF);
    tail[k++] = (unsigned char)((crc >> 16) & 0xFF);
    tail[k++] = (unsigned char)(crc >> 24);
    Py_ssize_t prefix = n < REC_PREFIX ? n : REC_PREFIX;
    tail[k++] = (unsigned char)prefix;
    if (log_head(log, REC_SEND, fd, 0) < 0 || log_put(log, tail, k) < 0) {
        return -1;
    }
    return log_put(log, buf, prefix);
}

/* The three calls, recording or not: with `log` (a bytearray) each also
 * appends its record (see the record/replay section above); with NULL it is
 * the plain fast path. One body for both, so that a recording run makes
 * exactly the calls an unrecorded one does. do_recv's `again`, when given
 * (not recording), is set at EAGAIN instead of raising BlockingIOError. */
static PyObject *
do_recv(PyObject *log, PyObject *sock, PyObject *size_arg, int *again)
{
    Py_ssize_t size = buffer_size(size_arg, "negative buffersize in recv");
    if (size < 0) {
        return NULL;
    }
    int fd = log != NULL ? rec_socket_fd(log, REC_RECV, sock) : socket_fd(sock);
    if (fd < 0) {
        return NULL;
    }
    PyObject *data = PyBytes_FromStringAndSize(NULL, size);
    if (data == NULL) {
        return NULL;
    }
    ssize_t n = transfer(fd, PyBytes_AS_STRING(data), (size_t)size, 0);
    if (n < 0) {
        int err = errno;
        Py_DECREF(data);
        if (n != -1) {
            return NULL;
        }
        if (log != NULL) {
            return log_failure(log, REC_RECV, fd, err);
        }
        if (again != NULL && (err == EAGAIN || err == EWOULDBLOCK)) {
            *again = 1;  /* no exception made: the caller would catch it at once */
            return NULL;
        }
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    if (n != size && _PyBytes_Resize(&data, n) < 0) {
        return NULL;
    }
    if (log != NULL && (log_head(log, REC_RECV, fd, 0) < 0 || log_bytes(log, PyBytes_AS_STRING(data), n) < 0)) {
        Py_DECREF(data);
        return NULL;
    }
    return data;
}

static PyObject *
do_recv_into(PyObject *log, PyObject *sock, PyObject *buffer, PyObject *nbytes_arg)
{
    Py_ssize_t want = buffer_size(nbytes_arg, "negative buffersize in recv_into");
    if (want < 0) {
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(buffer, &view, PyBUF_WRITABLE) < 0) {
        return NULL;
    }
    if (want == 0) {
        want = view.len;
    }
    else if (view.len < want) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "buffer too small for requested bytes");
        return NULL;
    }
    int fd = log != NULL ? rec_socket_fd(log, REC_RECV_INTO, sock) : socket_fd(sock);
    if (fd < 0) {
        PyBuffer_Release(&view);
        return NULL;
    }
    ssize_t n = transfer(fd, view.buf, (size_t)want, 0);
    int err = errno;
    int bad = n >= 0 && log != NULL && (log_head(log, REC_RECV_INTO, fd, 0) < 0 || log_bytes(log, view.buf, n) < 0);
    PyBuffer_Release(&view);
    if (n < 0) {
        if (n != -1) {
            return NULL;
        }
        if (log != NULL) {
            return log_failure(log, REC_RECV_INTO, fd, err);
        }
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return bad ? NULL : PyLong_FromSsize_t(n);
}

static PyObject *
do_send(PyObject *log, PyObject *sock, PyObject *data, int *again)
{
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    int fd = log != NULL ? rec_socket_fd(log, REC_SEND, sock) : socket_fd(sock);
    if (fd < 0) {
        PyBuffer_Release(&view);
        return NULL;
    }
    ssize_t n = transfer(fd, view.buf, (size_t)view.len, 1);
    int err = errno;
    int bad = n >= 0 && log != NULL && log_sent(log, fd, view.buf, n) < 0;
    PyBuffer_Release(&view);
    if (n < 0) {
        if (n != -1) {
            return NULL;
        }
        if (log != NULL) {
            return log_failure(log, REC_SEND, fd, err);
        }
        if (again != NULL && (err == EAGAIN || err == EWOULDBLOCK)) {
            *again = 1;
            return NULL;
        }
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return bad ? NULL : PyLong_FromSsize_t(n);
}

static PyObject *
sock_recv(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "sock_recv(sock, bufsize)");
        return NULL;
    }
    return do_recv(NULL, args[0], args[1], NULL);
}

static PyObject *
sock_recv_into(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "sock_recv_into(sock, buffer, nbytes)");
        return NULL;
    }
    return do_recv_into(NULL, args[0], args[1], args[2]);
}

static PyObject *
sock_send(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "sock_send(sock, data)");
        return NULL;
    }
    return do_send(NULL, args[0], args[1], NULL);
}

static PyObject *
rec_recv(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "rec_recv(log, sock, bufsize)");
        return NULL;
    }
    return check_log(args[0]) < 0 ? NULL : do_recv(args[0], args[1], args[2], NULL);
}

static PyObject *
rec_recv_into(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "rec_recv_into(log, sock, buffer, nbytes)");
        return NULL;
    }
    return check_log(args[0]) < 0 ? NULL : do_recv_into(args[0], args[1], args[2], args[3]);
}

static PyObject *
rec_send(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "rec_send(log, sock, data)");
        return NULL;
    }
    return check_log(args[0]) < 0 ? NULL : do_send(args[0], args[1], args[2], NULL);
}

/* -- fdio's per-fd record ------------------------------------------------- */

#define READ_EVENTS (EPOLLIN | EPOLLERR | EPOLLHUP | EPOLLRDHUP)
#define WRITE_EVENTS (EPOLLOUT | EPOLLERR | EPOLLHUP)
#define EDGE_READ (EPOLLIN | EPOLLRDHUP | EPOLLET)

typedef struct {
    PyObject_HEAD
    PyObject *reader;       /* the Thread waiting to read, or None */
    PyObject *writer;       /* the Thread waiting to write, or None */
    long read_ready;        /* events that arrived while no reader waited */
    char watching_out;      /* EPOLLOUT is in the fd's epoll mask */
    int fd;
    PyObject *sched;
    PyObject *ready_append; /* sched._ready.append */
    PyObject *worker;       /* the IOWorker: its `waiting` count */
} FdWaiters;

static PyTypeObject FdWaitersType;

/* The threads ready[start:] as a record's wake list, for the common case:
 * each woken with None or an int and no exception. rec_handler(log, ready,
 * start, tid, index) writes a HANDLER record and rec_poll(log, ready, start,
 * now) a POLL record exactly as threadlib/replay/recorder.py does (its
 * Python is the specification); each returns False, having written nothing,
 * when a wake is not of that kind: the Python recorder then writes it. */

#define REC_HANDLER 1
#define REC_POLL 2
#define REC_T_NONE 0
#define REC_T_INT 1

static Py_ssize_t off_id;

/* 1 if every thread of ready[start:] is simple, 0 if not, -1 on error. */
static int
wakes_simple(PyObject *ready, Py_ssize_t start, Py_ssize_t end)
{
    for (Py_ssize_t i = start; i < end; i++) {
        PyObject *t = PySequence_GetItem(ready, i);
        if (t == NULL) {
            return -1;
        }
        PyObject *exc = *(PyObject **)((char *)t + off_exc);
        PyObject *value = *(PyObject **)((char *)t + off_value);
        PyObject *tid = *(PyObject **)((char *)t + off_id);
        int simple = (exc == NULL || exc == Py_None) && tid != NULL && PyLong_CheckExact(tid) &&
                     (value == NULL || value == Py_None || PyLong_CheckExact(value));
        if (simple && value != NULL && value != Py_None) {
            int overflow = 0;
            long long v = PyLong_AsLongLongAndOverflow(value, &overflow);
            simple = !overflow && v > -(1LL << 60) && v < (1LL << 60);
        }
        Py_DECREF(t);
        if (!simple) {
            return 0;
        }
    }
    return 1;
}

static int
put_wakes_c(PyObject *log, PyObject *ready, Py_ssize_t start, Py_ssize_t end)
{
    unsigned char b[32];
    int k = varint(b, (unsigned long long)(end - start));
    if (log_put(log, b, k) < 0) {
        return -1;
    }
    for (Py_ssize_t i = start; i < end; i++) {
        PyObject *t = PySequence_GetItem(ready, i);
        if (t == NULL) {
            return -1;
        }
        PyObject *value = *(PyObject **)((char *)t + off_value);
        PyObject *tid = *(PyObject **)((char *)t + off_id);
        k = varint(b, (unsigned long long)PyLong_AsUnsignedLongLong(tid));
        if (value == NULL || value == Py_None) {
            b[k++] = REC_T_NONE;
        }
        else {
            long long v = PyLong_AsLongLong(value);
            b[k++] = REC_T_INT;
            k += varint(b + k, v >= 0 ? (unsigned long long)v << 1 : (((unsigned long long)(-v)) << 1) - 1);
        }
        Py_DECREF(t);
        if (PyErr_Occurred() || log_put(log, b, k) < 0) {
            return -1;
        }
    }
    return 0;
}

/* A HANDLER record for thread tid at index, waking ready[start:]: 1 when
 * written, 0 when a wake is not simple (nothing written), -1 on error. */
static int
handler_record(PyObject *log, PyObject *ready, Py_ssize_t start, long long tid, long long index)
{
    Py_ssize_t end = PySequence_Size(ready);
    if (end < 0) {
        return -1;
    }
    int simple = wakes_simple(ready, start, end);
    if (simple <= 0) {
        return simple;
    }
    unsigned char b[32];
    int k = 0;
    b[k++] = REC_HANDLER;
    k += varint(b + k, (unsigned long long)tid);
    k += varint(b + k, (unsigned long long)index);
    if (log_put(log, b, k) < 0 || put_wakes_c(log, ready, start, end) < 0) {
        return -1;
    }
    return 1;
}

/* A POLL record at now, waking ready[start:]: as handler_record. */
static int
poll_record(PyObject *log, PyObject *ready, Py_ssize_t start, double now)
{
    Py_ssize_t end = PySequence_Size(ready);
    if (end < 0) {
        return -1;
    }
    if (end == start) {
        unsigned char b[2] = {REC_POLL, 0};
        return log_put(log, b, 2) < 0 ? -1 : 1;
    }
    int simple = wakes_simple(ready, start, end);
    if (simple <= 0) {
        return simple;
    }
    unsigned char b[10];
    b[0] = REC_POLL;
    b[1] = 1;
    memcpy(b + 2, &now, 8);   /* little-endian x86-64, as struct "<d" */
    if (log_put(log, b, 10) < 0 || put_wakes_c(log, ready, start, end) < 0) {
        return -1;
    }
    return 1;
}

static PyObject *
rec_handler(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5 || check_log(args[0]) < 0) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_TypeError, "rec_handler(log, ready, start, tid, index)");
        }
        return NULL;
    }
    Py_ssize_t start = PyLong_AsSsize_t(args[2]);
    long long tid = PyLong_AsLongLong(args[3]), index = PyLong_AsLongLong(args[4]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    int done = handler_record(args[0], args[1], start, tid, index);
    return done < 0 ? NULL : Py_NewRef(done ? Py_True : Py_False);
}

static PyObject *
rec_poll(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4 || check_log(args[0]) < 0) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_TypeError, "rec_poll(log, ready, start, now)");
        }
        return NULL;
    }
    Py_ssize_t start = PyLong_AsSsize_t(args[2]);
    double now = PyFloat_AsDouble(args[3]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    int done = poll_record(args[0], args[1], start, now);
    return done < 0 ? NULL : Py_NewRef(done ? Py_True : Py_False);
}

/* The recorder's wrappers (recorder.py's ``recorded`` and ``poll``
 * closures are their specification), compiled so that recording adds no
 * Python frame to a handler call or a poll. Both keep the recording clock
 * quiet around the call, then write their record (the Python ``slow``
 * callable writes one whose wakes are not simple) and flush the log when it
 * has grown past flush_at. */

static PyObject *s_quiet, *s_flush;
static int quiet_add(PyObject *clock, long delta);

/* quiet_add on a clock whose `quiet` is a __slots__ member at `offset`
 * (RecordingClock's): the slot itself, no attribute lookup; else by name. */
static int
quiet_add_at(PyObject *clock, Py_ssize_t offset, long delta)
{
    if (offset > 0) {
        PyObject **slot = (PyObject **)((char *)clock + offset);
        if (*slot != NULL && PyLong_CheckExact(*slot)) {
            long v = PyLong_AsLong(*slot);
            if (v == -1 && PyErr_Occurred()) {
                return -1;
            }
            PyObject *nq = PyLong_FromLong(v + delta);
            if (nq == NULL) {
                return -1;
            }
            Py_SETREF(*slot, nq);
            return 0;
        }
    }
    return quiet_add(clock, delta);
}

static int
quiet_add(PyObject *clock, long delta)
{
    PyObject *q = PyObject_GetAttr(clock, s_quiet);
    if (q == NULL) {
        return -1;
    }
    long v = PyLong_AsLong(q);
    Py_DECREF(q);
    if (v == -1 && PyErr_Occurred()) {
        return -1;
    }
    PyObject *nq = PyLong_FromLong(v + delta);
    if (nq == NULL) {
        return -1;
    }
    int r = PyObject_SetAttr(clock, s_quiet, nq);
    Py_DECREF(nq);
    return r;
}

static int
maybe_flush(PyObject *log, PyObject *writer, Py_ssize_t flush_at)
{
    if (PyByteArray_GET_SIZE(log) < flush_at) {
        return 0;
    }
    PyObject *r = PyObject_CallMethodNoArgs(writer, s_flush);
    Py_XDECREF(r);
    return r == NULL ? -1 : 0;
}

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *inner;      /* the handler, or the scheduler's real _poll */
    PyObject *ready;      /* the scheduler's ready deque */
    PyObject *clock;      /* the RecordingClock */
    PyObject *log;        /* the log's bytearray */
    PyObject *writer;     /* its LogWriter (flush) */
    PyObject *slow;       /* writes a record the compiled writer declines */
    PyObject *extra;      /* handler: unused; poll: [start, polling] state list */
    PyObject *now;        /* poll: the inner clock's now */
    long long index;      /* handler: its class's index */
    Py_ssize_t flush_at;
    Py_ssize_t quiet_at;  /* the clock's `quiet` slot offset, or 0: by name */
} Recorded;

static PyTypeObject RecordedHandlerType, RecordedPollType;

static PyObject *
recorded_handler_call(Recorded *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    if (PyVectorcall_NARGS(nargsf) != 2 || kwnames != NULL) {
        PyErr_SetString(PyExc_TypeError, "a recorded handler takes (thread, syscall)");
        return NULL;
    }
    PyObject *t = args[0];
    Py_ssize_t start = PyObject_Size(self->ready);
    if (start < 0 || quiet_add_at(self->clock, self->quiet_at, 1) < 0) {
        return NULL;
    }
    PyObject *r = PyObject_Vectorcall(self->inner, args, 2, NULL);
    PyObject *et = NULL, *ev = NULL, *etb = NULL;
    if (r == NULL) {
        PyErr_Fetch(&et, &ev, &etb);
    }
    int ok = quiet_add_at(self->clock, self->quiet_at, -1) == 0;
    if (ok) {
        PyObject *tid = *(PyObject **)((char *)t + off_id);
        int done = 0;
        if (tid != NULL && PyLong_CheckExact(tid)) {
            long long id = PyLong_AsLongLong(tid);
            done = PyErr_Occurred() ? -1 : handler_record(self->log, self->ready, start, id, self->index);
        }
        if (done == 0) {
            PyObject *pstart = PyLong_FromSsize_t(start);
            PyObject *w = pstart == NULL ? NULL : PyObject_CallFunctionObjArgs(self->slow, t, pstart, NULL);
            Py_XDECREF(pstart);
            Py_XDECREF(w);
            done = w == NULL ? -1 : 1;
        }
        ok = done > 0 && maybe_flush(self->log, self->writer, self->flush_at) == 0;
    }
    if (r == NULL) {
        if (ok) {
            PyErr_Restore(et, ev, etb);
        }
        else {  /* the recorder's own failure replaces the handler's, as a finally block's would */
            Py_XDECREF(et);
            Py_XDECREF(ev);
            Py_XDECREF(etb);
        }
        return NULL;
    }
    if (!ok) {
        Py_DECREF(r);
        return NULL;
    }
    return r;
}

static PyObject *
recorded_poll_call(Recorded *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    if (PyVectorcall_NARGS(nargsf) != 0 || kwnames != NULL) {
        PyErr_SetString(PyExc_TypeError, "a recorded poll takes no arguments");
        return NULL;
    }
    PyObject *state = self->extra;
    Py_ssize_t before = PyObject_Size(self->ready);
    if (before < 0 || !PyList_CheckExact(state) || PyList_GET_SIZE(state) != 2) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_TypeError, "a recorded poll's state is a list of two");
        }
        return NULL;
    }
    PyObject *pbefore = PyLong_FromSsize_t(before);
    if (pbefore == NULL) {
        return NULL;
    }
    PyList_SetItem(state, 0, pbefore);
    PyList_SetItem(state, 1, Py_NewRef(Py_True));
    if (quiet_add_at(self->clock, self->quiet_at, 1) < 0) {
        return NULL;
    }
    PyObject *r = PyObject_CallNoArgs(self->inner);
    PyObject *et = NULL, *ev = NULL, *etb = NULL;
    if (r == NULL) {
        PyErr_Fetch(&et, &ev, &etb);
    }
    int ok = quiet_add_at(self->clock, self->quiet_at, -1) == 0;
    PyList_SetItem(state, 1, Py_NewRef(Py_False));
    if (r == NULL) {  /* the Python poll() writes nothing when the poll raised */
        if (ok) {
            PyErr_Restore(et, ev, etb);
        }
        else {
            Py_XDECREF(et);
            Py_XDECREF(ev);
            Py_XDECREF(etb);
        }
        return NULL;
    }
    Py_DECREF(r);
    if (!ok) {
        return NULL;
    }
    /* The start may have moved: a user-stack worker inside the poll writes
     * the wakes before its own and moves it past them. */
    Py_ssize_t start = PyLong_AsSsize_t(PyList_GET_ITEM(state, 0));
    PyObject *pnow = PyObject_CallNoArgs(self->now);
    if (pnow == NULL || (start == -1 && PyErr_Occurred())) {
        Py_XDECREF(pnow);
        return NULL;
    }
    double now = PyFloat_AsDouble(pnow);
    int done = PyErr_Occurred() ? -1 : poll_record(self->log, self->ready, start, now);
    if (done == 0) {
        PyObject *pstart = PyLong_FromSsize_t(start);
        PyObject *w = pstart == NULL ? NULL : PyObject_CallFunctionObjArgs(self->slow, pstart, pnow, NULL);
        Py_XDECREF(pstart);
        Py_XDECREF(w);
        done = w == NULL ? -1 : 1;
    }
    Py_DECREF(pnow);
    if (done < 0 || maybe_flush(self->log, self->writer, self->flush_at) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static int
recorded_init(Recorded *self, PyObject *args, PyObject *kwds)
{
    /* RecordedHandler(handler, ready, clock, log, writer, slow, index, flush_at)
     * RecordedPoll(poll, ready, clock, log, writer, slow, state, now, flush_at) */
    PyObject *inner, *ready, *clock, *log, *writer, *slow, *extra = Py_None, *now = Py_None;
    long long index = 0;
    Py_ssize_t flush_at;
    int is_poll = Py_IS_TYPE(self, &RecordedPollType);
    int ok = is_poll
        ? PyArg_ParseTuple(args, "OOOO!OOO!On:RecordedPoll", &inner, &ready, &clock, &PyByteArray_Type, &log,
                           &writer, &slow, &PyList_Type, &extra, &now, &flush_at)
        : PyArg_ParseTuple(args, "OOOO!OOLn:RecordedHandler", &inner, &ready, &clock, &PyByteArray_Type, &log,
                           &writer, &slow, &index, &flush_at);
    if (!ok) {
        return -1;
    }
    Py_XSETREF(self->inner, Py_NewRef(inner));
    Py_XSETREF(self->ready, Py_NewRef(ready));
    Py_XSETREF(self->clock, Py_NewRef(clock));
    Py_XSETREF(self->log, Py_NewRef(log));
    Py_XSETREF(self->writer, Py_NewRef(writer));
    Py_XSETREF(self->slow, Py_NewRef(slow));
    Py_XSETREF(self->extra, Py_NewRef(extra));
    Py_XSETREF(self->now, Py_NewRef(now));
    self->index = index;
    self->flush_at = flush_at;
    /* A `quiet` that is a plain object slot, reached the usual way: its offset. */
    self->quiet_at = 0;
    PyTypeObject *clock_type = Py_TYPE(clock);
    PyObject *descr = _PyType_Lookup(clock_type, s_quiet);
    if (descr != NULL && Py_IS_TYPE(descr, &PyMemberDescr_Type) &&
            ((PyMemberDescrObject *)descr)->d_member->type == T_OBJECT_EX &&
            clock_type->tp_getattro == PyObject_GenericGetAttr && clock_type->tp_setattro == PyObject_GenericSetAttr) {
        self->quiet_at = ((PyMemberDescrObject *)descr)->d_member->offset;
    }
    self->vectorcall = (vectorcallfunc)(is_poll ? recorded_poll_call : recorded_handler_call);
    return 0;
}

static int
recorded_traverse(Recorded *self, visitproc visit, void *arg)
{
    Py_VISIT(self->inner);
    Py_VISIT(self->ready);
    Py_VISIT(self->clock);
    Py_VISIT(self->log);
    Py_VISIT(self->writer);
    Py_VISIT(self->slow);
    Py_VISIT(self->extra);
    Py_VISIT(self->now);
    return 0;
}

static int
recorded_clear(Recorded *self)
{
    Py_CLEAR(self->inner);
    Py_CLEAR(self->ready);
    Py_CLEAR(self->clock);
    Py_CLEAR(self->log);
    Py_CLEAR(self->writer);
    Py_CLEAR(self->slow);
    Py_CLEAR(self->extra);
    Py_CLEAR(self->now);
    return 0;
}

static void
recorded_dealloc(Recorded *self)
{
    PyObject_GC_UnTrack(self);
    recorded_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
recorded_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    Recorded *self = (Recorded *)PyType_GenericNew(type, args, kwds);
    if (self != NULL) {
        self->vectorcall = NULL;
    }
    return (PyObject *)self;
}

static PyObject *
recorded_tp_call(Recorded *self, PyObject *args, PyObject *kwds)
{
    if (self->vectorcall == NULL) {
        PyErr_SetString(PyExc_TypeError, "not initialised");
        return NULL;
    }
    return PyVectorcall_Call((PyObject *)self, args, kwds);
}

#define RECORDED_TYPE(cname, pyname, doc)                                              \
    static PyTypeObject cname = {                                                      \
        PyVarObject_HEAD_INIT(NULL, 0)                                                 \
        .tp_name = "threadlib._kernel._speedups." pyname,                              \
        .tp_basicsize = sizeof(Recorded),                                              \
        .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL, \
        .tp_doc = doc,                                                                 \
        .tp_new = recorded_new,                                                        \
        .tp_init = (initproc)recorded_init,                                            \
        .tp_dealloc = (destructor)recorded_dealloc,                                    \
        .tp_traverse = (traverseproc)recorded_traverse,                                \
        .tp_clear = (inquiry)recorded_clear,                                           \
        .tp_vectorcall_offset = offsetof(Recorded, vectorcall),                        \
        .tp_call = (ternaryfunc)recorded_tp_call,                                      \
    };

RECORDED_TYPE(RecordedHandlerType, "RecordedHandler",
              "RecordedHandler(handler, ready, clock, log, writer, slow, index, flush_at): recorder.py's "
              "recorded handler wrapper, compiled.")
RECORDED_TYPE(RecordedPollType, "RecordedPoll",
              "RecordedPoll(poll, ready, clock, log, writer, slow, state, now, flush_at): recorder.py's "
              "recorded poll, compiled.")

static PyObject *s_waiting, *s_resume, *s_modify_fd, *s__ready, *s_append_name;

static int
fdwaiters_init(FdWaiters *self, PyObject *args, PyObject *kwds)
{
    PyObject *sched, *worker;
    int fd;
    if (!PyArg_ParseTuple(args, "OOi:FdWaiters", &sched, &worker, &fd)) {
        return -1;
    }
    PyObject *ready = PyObject_GetAttr(sched, s__ready);
    if (ready == NULL) {
        return -1;
    }
    PyObject *append = PyObject_GetAttr(ready, s_append_name);
    Py_DECREF(ready);
    if (append == NULL) {
        return -1;
    }
    Py_XSETREF(self->ready_append, append);
    Py_XSETREF(self->reader, Py_NewRef(Py_None));
    Py_XSETREF(self->writer, Py_NewRef(Py_None));
    Py_XSETREF(self->sched, Py_NewRef(sched));
    Py_XSETREF(self->worker, Py_NewRef(worker));
    self->read_ready = 0;
    self->watching_out = 0;
    self->fd = fd;
    return 0;
}

static int
fdwaiters_traverse(FdWaiters *self, visitproc visit, void *arg)
{
    Py_VISIT(self->reader);
    Py_VISIT(self->writer);
    Py_VISIT(self->sched);
    Py_VISIT(self->ready_append);
    Py_VISIT(self->worker);
    return 0;
}

static int
fdwaiters_clear(FdWaiters *self)
{
    Py_CLEAR(self->reader);
    Py_CLEAR(self->writer);
    Py_CLEAR(self->sched);
    Py_CLEAR(self->ready_append);
    Py_CLEAR(self->worker);
    return 0;
}

static void
fdwaiters_dealloc(FdWaiters *self)
{
    PyObject_GC_UnTrack(self);
    fdwaiters_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* worker.waiting -= 1 */
static int
one_less_waiting(PyObject *worker)
{
    PyObject *count = PyObject_GetAttr(worker, s_waiting);
    if (count == NULL) {
        return -1;
    }
    Py_ssize_t n = PyLong_AsSsize_t(count);
    Py_DECREF(count);
    if (n == -1 && PyErr_Occurred()) {
        return -1;
    }
    PyObject *less = PyLong_FromSsize_t(n - 1);
    if (less == NULL) {
        return -1;
    }
    int failed = PyObject_SetAttr(worker, s_waiting, less);
    Py_DECREF(less);
    return failed;
}

static PyObject *
fdwaiters_on_events(FdWaiters *self, PyObject *arg)
{
    long events = PyLong_AsLong(arg);
    if (events == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (events & READ_EVENTS) {
        PyObject *t = self->reader;
        if (t != Py_None) {
            self->reader = Py_NewRef(Py_None); /* t's reference is ours now */
            if (one_less_waiting(self->worker) < 0) {
                Py_DECREF(t);
                return NULL;
            }
            PyObject *r;
            if (thread_type != NULL && PyObject_TypeCheck(t, thread_type) && *(PyObject **)((char *)t + off_scope) == Py_None) {
                /* Scheduler.resume, inlined (no timer to disarm) */
                slot_set(t, off_value, arg);
                slot_set(t, off_wait, Py_None);
                r = PyObject_CallOneArg(self->ready_append, t);
            }
            else {
                r = call_method(self->sched, s_resume, t, arg, NULL, 2);
            }
            Py_DECREF(t);
            if (r == NULL) {
                return NULL;
            }
            Py_DECREF(r);
        }
        else {
            self->read_ready |= events;
        }
    }
    if ((events & WRITE_EVENTS) && self->watching_out) {
        PyObject *t = self->writer;
        PyObject *r;
        if (t != Py_None) {
            self->writer = Py_NewRef(Py_None);
            if (one_less_waiting(self->worker) < 0) {
                Py_DECREF(t);
                return NULL;
            }
            r = call_method(self->sched, s_resume, t, arg, NULL, 2);
            Py_DECREF(t);
        }
        else if (events & EPOLLOUT) {
            self->watching_out = 0;
            PyObject *fd = PyLong_FromLong(self->fd);
            PyObject *mask = PyLong_FromLong(EDGE_READ);
            r = (fd && mask) ? call_method(self->sched, s_modify_fd, fd, mask, NULL, 2) : NULL;
            Py_XDECREF(fd);
            Py_XDECREF(mask);
        }
        else {
            r = Py_NewRef(Py_None);
        }
        if (r == NULL) {
            return NULL;
        }
        Py_DECREF(r);
    }
    Py_RETURN_NONE;
}

/* IOWorker._wait_read for its common case, written out: ``handler`` is the
 * worker's own _wait_read, no interrupt is pending, t has no cancel scope,
 * and the fd already has its FdWaiters record with no reader (else 0: call
 * the handler, which also makes records and refuses a second reader).
 * Events that came while nobody waited resume t at once, as the handler's
 * sched.resume does; otherwise t becomes the fd's reader and waits in sc.
 * Returns 1 when served, 0 when the handler must be called, -1 on error. */
static int
wait_read_inline(PyObject *handler, PyObject *pending, PyObject *append, PyObject *t, PyObject *sc)
{
    if (waitread_type == NULL || !Py_IS_TYPE(sc, waitread_type) || !PyMethod_Check(handler) ||
        PyMethod_GET_FUNCTION(handler) != wait_read_func || PyDict_GET_SIZE(pending) ||
        *(PyObject **)((char *)t + off_scope) != Py_None) {
        return 0;
    }
    PyObject *fd = *(PyObject **)((char *)sc + off_waitread_fd);
    if (fd == NULL) {
        return 0;
    }
    PyObject *worker = PyMethod_GET_SELF(handler);
    PyObject *fds = PyObject_GetAttr(worker, s_fds);
    if (fds == NULL) {
        return -1;
    }
    PyObject *rec = PyDict_CheckExact(fds) ? PyDict_GetItemWithError(fds, fd) : NULL;
    Py_XINCREF(rec);
    Py_DECREF(fds);
    if (rec == NULL) {
        return PyErr_Occurred() ? -1 : 0;
    }
    FdWaiters *w = (FdWaiters *)rec;
    int served = 0;
    if (!Py_IS_TYPE(rec, &FdWaitersType) || w->reader != Py_None) {
        goto out;
    }
    if (w->read_ready) {
        PyObject *events = PyLong_FromLong(w->read_ready);
        if (events == NULL) {
            served = -1;
            goto out;
        }
        w->read_ready = 0;
        slot_set(t, off_value, events);
        Py_DECREF(events);
        slot_set(t, off_wait, Py_None);
        PyObject *r = PyObject_CallOneArg(append, t);
        if (r == NULL) {
            served = -1;
            goto out;
        }
        Py_DECREF(r);
        served = 1;
        goto out;
    }
    PyObject *waiting = PyObject_GetAttr(worker, s_waiting);
    PyObject *more = waiting ? PyNumber_Add(waiting, one) : NULL;
    Py_XDECREF(waiting);
    if (more == NULL || PyObject_SetAttr(worker, s_waiting, more) < 0) {
        Py_XDECREF(more);
        served = -1;
        goto out;
    }
    Py_DECREF(more);
    Py_SETREF(w->reader, Py_NewRef(t));
    slot_set(t, off_wait, sc);
    served = 1;
out:
    Py_DECREF(rec);
    return served;
}

static int
fdwaiters_set_thread(PyObject **field, PyObject *value)
{
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete a waiter slot");
        return -1;
    }
    Py_XSETREF(*field, Py_NewRef(value));
    return 0;
}

static PyObject *fdwaiters_get_reader(FdWaiters *self, void *c) { return Py_NewRef(self->reader); }
static int fdwaiters_set_reader(FdWaiters *self, PyObject *v, void *c) { return fdwaiters_set_thread(&self->reader, v); }
static PyObject *fdwaiters_get_writer(FdWaiters *self, void *c) { return Py_NewRef(self->writer); }
static int fdwaiters_set_writer(FdWaiters *self, PyObject *v, void *c) { return fdwaiters_set_thread(&self->writer, v); }

static PyObject *fdwaiters_get_watching_out(FdWaiters *self, void *c) { return PyBool_FromLong(self->watching_out); }

static int
fdwaiters_set_watching_out(FdWaiters *self, PyObject *v, void *c)
{
    int truth = v ? PyObject_IsTrue(v) : -1;
    if (truth < 0) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_AttributeError, "cannot delete watching_out");
        }
        return -1;
    }
    self->watching_out = (char)truth;
    return 0;
}

static PyGetSetDef fdwaiters_getset[] = {
    {"reader", (getter)fdwaiters_get_reader, (setter)fdwaiters_set_reader, "The thread waiting to read, or None.", NULL},
    {"writer", (getter)fdwaiters_get_writer, (setter)fdwaiters_set_writer, "The thread waiting to write, or None.", NULL},
    {"watching_out", (getter)fdwaiters_get_watching_out, (setter)fdwaiters_set_watching_out,
     "Whether EPOLLOUT is in the fd's epoll mask.", NULL},
    {NULL},
};

static PyMemberDef fdwaiters_members[] = {
    {"read_ready", T_LONG, offsetof(FdWaiters, read_ready), 0, "Events that arrived while no reader waited."},
    {"fd", T_INT, offsetof(FdWaiters, fd), READONLY, "The fd."},
    {"sched", T_OBJECT, offsetof(FdWaiters, sched), READONLY, "The scheduler."},
    {"ready_append", T_OBJECT, offsetof(FdWaiters, ready_append), READONLY, "The ready queue's append."},
    {"worker", T_OBJECT, offsetof(FdWaiters, worker), READONLY, "The IOWorker."},
    {NULL},
};

static PyMethodDef fdwaiters_methods[] = {
    {"on_events", (PyCFunction)fdwaiters_on_events, METH_O,
     "The poller's callback: wake the reader and/or writer the events are for (fdio._FdWaiters.on_events)."},
    {NULL},
};

static PyTypeObject FdWaitersType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "threadlib._kernel._speedups.FdWaiters",
    .tp_basicsize = sizeof(FdWaiters),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "fdio._FdWaiters, compiled: one fd's reader and writer slots and its event callback.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)fdwaiters_init,
    .tp_dealloc = (destructor)fdwaiters_dealloc,
    .tp_traverse = (traverseproc)fdwaiters_traverse,
    .tp_clear = (inquiry)fdwaiters_clear,
    .tp_methods = fdwaiters_methods,
    .tp_members = fdwaiters_members,
    .tp_getset = fdwaiters_getset,
};

int
slot_offset(PyTypeObject *type, const char *name, Py_ssize_t *offset)
{
    PyObject *descr = PyDict_GetItemString(type->tp_dict, name);
    if (descr == NULL || !Py_IS_TYPE(descr, &PyMemberDescr_Type)) {
        PyErr_Format(PyExc_TypeError, "configure: %s.%s is not a __slots__ member", type->tp_name, name);
        return -1;
    }
    PyMemberDef *member = ((PyMemberDescrObject *)descr)->d_member;
    if (member->type != T_OBJECT_EX) {
        PyErr_Format(PyExc_TypeError, "configure: %s.%s is not an object slot", type->tp_name, name);
        return -1;
    }
    *offset = member->offset;
    return 0;
}

static PyObject *
configure(PyObject *module, PyObject *args)
{
    PyObject *yield_obj, *interrupt, *retrieved, *thread;
    if (!PyArg_ParseTuple(args, "OOOO!:configure", &yield_obj, &interrupt, &retrieved, &PyType_Type,
                          &thread)) {
        return NULL;
    }
    if (!PyType_Check(interrupt) || !PyCallable_Check(retrieved)) {
        PyErr_SetString(PyExc_TypeError, "configure(YIELD, _PendingInterrupt, mark_retrieved, Thread)");
        return NULL;
    }
    if (slot_offset((PyTypeObject *)thread, "_coro", &off_coro) < 0 ||
        slot_offset((PyTypeObject *)thread, "_value", &off_value) < 0 ||
        slot_offset((PyTypeObject *)thread, "_exc", &off_exc) < 0 ||
        slot_offset((PyTypeObject *)thread, "_wait", &off_wait) < 0 ||
        slot_offset((PyTypeObject *)thread, "_scope", &off_scope) < 0 ||
        slot_offset((PyTypeObject *)thread, "_id", &off_id) < 0) {
        return NULL;
    }
    Py_XSETREF(yield_singleton, Py_NewRef(yield_obj));
    Py_XSETREF(pending_interrupt, Py_NewRef(interrupt));
    Py_XSETREF(mark_retrieved, Py_NewRef(retrieved));
    Py_XSETREF(thread_type, (PyTypeObject *)Py_NewRef(thread));
    Py_RETURN_NONE;
}

static PyObject *
configure_scheduler(PyObject *module, PyObject *type)
{
    if (!PyType_Check(type)) {
        PyErr_SetString(PyExc_TypeError, "configure_scheduler(Scheduler)");
        return NULL;
    }
    if (slot_offset((PyTypeObject *)type, "current", &off_current) < 0) {
        return NULL;
    }
    Py_XSETREF(scheduler_type, (PyTypeObject *)Py_NewRef(type));
    Py_RETURN_NONE;
}

static PyObject *
configure_waits(PyObject *module, PyObject *args)
{
    PyObject *park, *waitqueue, *func, *waitread, *read_func;
    if (!PyArg_ParseTuple(args, "O!O!O!O!O!:configure_waits", &PyType_Type, &park, &PyType_Type, &waitqueue,
                          &PyFunction_Type, &func, &PyType_Type, &waitread, &PyFunction_Type, &read_func)) {
        return NULL;
    }
    if (slot_offset((PyTypeObject *)park, "queue", &off_park_queue) < 0 ||
        slot_offset((PyTypeObject *)waitqueue, "_sched", &off_wq_sched) < 0 ||
        slot_offset((PyTypeObject *)waitqueue, "_waiters", &off_wq_waiters) < 0 ||
        slot_offset((PyTypeObject *)waitread, "fd", &off_waitread_fd) < 0) {
        return NULL;
    }
    if (one == NULL && (one = PyLong_FromLong(1)) == NULL) {
        return NULL;
    }
    Py_XSETREF(waitqueue_type, (PyTypeObject *)Py_NewRef(waitqueue));
    Py_XSETREF(sys_park_func, Py_NewRef(func));
    Py_XSETREF(park_type, (PyTypeObject *)Py_NewRef(park));
    Py_XSETREF(wait_read_func, Py_NewRef(read_func));
    Py_XSETREF(waitread_type, (PyTypeObject *)Py_NewRef(waitread));
    Py_RETURN_NONE;
}

/* ParkOnce and DONE are tuples awaited as they are iterated. Their Python
 * classes say so with ``__await__ = tuple.__iter__``, which CPython can only
 * reach through its generic slot (a type lookup and a wrapper call per
 * ``await``); this points the types' await slot at tuple's iterator itself.
 * Nothing else changes: the same iterator, the same values. */
static PyObject *
configure_awaitables(PyObject *module, PyObject *args)
{
    Py_ssize_t n = PyTuple_GET_SIZE(args);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *type = PyTuple_GET_ITEM(args, i);
        if (!PyType_Check(type) || !PyType_IsSubtype((PyTypeObject *)type, &PyTuple_Type) ||
            !(((PyTypeObject *)type)->tp_flags & Py_TPFLAGS_HEAPTYPE) ||
            ((PyTypeObject *)type)->tp_as_async == NULL) {
            PyErr_Format(PyExc_TypeError, "configure_awaitables: %R is not a tuple class defined in Python", type);
            return NULL;
        }
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        ((PyTypeObject *)PyTuple_GET_ITEM(args, i))->tp_as_async->am_await = PyTuple_Type.tp_iter;
    }
    Py_RETURN_NONE;
}

/* -- sockio's Stream.recv, compiled --------------------------------------------
 *
 * Stream.recv (sockio.py, its specification) is the one generator an echo
 * or a request makes per read. Here it is a method of Stream written in C
 * that returns a RecvCall: an awaitable (and iterable, for ``yield from``)
 * that does what the generator's body does, step for step, through the
 * iterator-send protocol (am_send), so that a read that completes at once
 * returns its bytes with no generator, no frame and no StopIteration, and
 * one that must wait yields the stream's WaitRead as the generator would.
 * A wait is withdrawn by ``throw`` (a cancel, a timeout of an enclosing
 * scope), which ends the call with that exception; ``close`` ends it.
 *
 * It is used only for what the specification does with no ``timeout``, on
 * the default socket layer (sockio._recv is this module's sock_recv):
 * with a timeout, under record/replay's socket layer, or for arguments
 * it does not take as given (keywords, too many), the method calls the
 * Python recv, which behaves as it always did. */
PyTypeObject RecvCallType;
static PyObject *stream_recv_spec;   /* sockio.Stream.recv, the Python function */
static PyObject *sockio_namespace;   /* sockio's globals: _recv names the socket layer's recv */
static PyObject *plain_sock_recv;    /* this module's sock_recv: the default layer's */
static PyObject *default_max_bytes;  /* 65536, recv's default */
static long hang_up_events;          /* sockio._HANG_UP */
static Py_ssize_t off_stream_sock, off_stream_wait_read, off_stream_drained, off_stream_hung_up;
static PyObject *s__recv, *s__drained, *s__hung_up, *s__sock, *s__wait_read;

typedef struct {
    PyObject_HEAD
    PyObject *stream;
    PyObject *max_bytes;    /* as the caller gave it: checked by the recv, as the generator's is */
    int state;              /* RECV_FRESH, RECV_WAITING (its WaitRead yielded) or RECV_DONE */
} RecvCall;

enum { RECV_FRESH, RECV_WAITING, RECV_DONE };

/* A slot of the stream as a borrowed reference, or NULL with the
 * AttributeError Python's own access would raise. */
static PyObject *
stream_slot(PyObject *stream, Py_ssize_t off, PyObject *name)
{
    PyObject *v = *(PyObject **)((char *)stream + off);
    if (v == NULL) {
        PyErr_SetObject(PyExc_AttributeError, name);
    }
    return v;
}

static PySendResult
recvcall_send(RecvCall *self, PyObject *arg, PyObject **result)
{
    PyObject *stream = self->stream;
    *result = NULL;
    if (self->state == RECV_DONE) {
        /* As an exhausted generator: it returns None at once. */
        *result = Py_NewRef(Py_None);
        return PYGEN_RETURN;
    }
    if (self->state == RECV_WAITING) {
        /* events = yield self._wait_read; if events and events & _HANG_UP: ... */
        int any = PyObject_IsTrue(arg);
        if (any < 0) {
            goto fail;
        }
        if (any) {
            long events = PyLong_AsLong(arg);
            if (events == -1 && PyErr_Occurred()) {
                goto fail;
            }
            if (events & hang_up_events) {
                slot_set(stream, off_stream_hung_up, Py_True);
            }
        }
    }
    else if (arg != Py_None) {
        /* Refused, and still not started, as a generator is. */
        PyErr_SetString(PyExc_TypeError, "can't send non-None value to a just-started generator");
        return PYGEN_ERROR;
    }
    /* The loop's top: if self._drained: self._drained = False (and wait)
     * else: try the recv. */
    PyObject *drained = stream_slot(stream, off_stream_drained, s__drained);
    if (drained == NULL) {
        goto fail;
    }
    int is_drained = PyObject_IsTrue(drained);
    if (is_drained < 0) {
        goto fail;
    }
    if (is_drained) {
        slot_set(stream, off_stream_drained, Py_False);
    }
    else {
        PyObject *sock = stream_slot(stream, off_stream_sock, s__sock);
        if (sock == NULL) {
            goto fail;
        }
        int again = 0;
        PyObject *data = do_recv(NULL, sock, self->max_bytes, &again);  /* EAGAIN: again, no exception */
        if (data != NULL) {
            /* self._drained = 0 < len(data) < max_bytes and not self._hung_up */
            Py_ssize_t n = PyBytes_GET_SIZE(data);
            Py_ssize_t most = PyLong_AsSsize_t(self->max_bytes);  /* checked by the recv */
            int now_drained = 0;
            if (0 < n && n < most) {
                PyObject *hung = stream_slot(stream, off_stream_hung_up, s__hung_up);
                int is_hung = hung == NULL ? -1 : PyObject_IsTrue(hung);
                if (is_hung < 0) {
                    Py_DECREF(data);
                    goto fail;
                }
                now_drained = !is_hung;
            }
            slot_set(stream, off_stream_drained, now_drained ? Py_True : Py_False);
            self->state = RECV_DONE;
            *result = data;
            return PYGEN_RETURN;
        }
        if (!again) {
            goto fail;
        }
    }
    PyObject *wait = stream_slot(stream, off_stream_wait_read, s__wait_read);
    if (wait == NULL) {
        goto fail;
    }
    self->state = RECV_WAITING;
    *result = Py_NewRef(wait);
    return PYGEN_NEXT;
fail:
    self->state = RECV_DONE;
    return PYGEN_ERROR;
}

/* send(value) and __next__: a return becomes StopIteration(value). */
static PyObject *
recvcall_step(RecvCall *self, PyObject *arg)
{
    PyObject *result;
    PySendResult how = recvcall_send(self, arg, &result);
    if (how == PYGEN_RETURN) {
        /* A tuple would be taken for StopIteration's arguments: wrap. */
        PyObject *stop = PyObject_CallOneArg(PyExc_StopIteration, result);
        Py_DECREF(result);
        if (stop != NULL) {
            PyErr_SetObject(PyExc_StopIteration, stop);
            Py_DECREF(stop);
        }
        return NULL;
    }
    return result;  /* the yielded wait, or NULL with the exception */
}

static PyObject *
recvcall_iternext(RecvCall *self)
{
    return recvcall_step(self, Py_None);
}

static PyObject *
recvcall_send_method(RecvCall *self, PyObject *arg)
{
    return recvcall_step(self, arg);
}

/* throw(exc) or throw(type[, value[, traceback]]): the generator has no
 * handler at its wait, so the exception ends the call and comes out. */
static PyObject *
recvcall_throw(RecvCall *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 3) {
        PyErr_SetString(PyExc_TypeError, "throw expected 1 to 3 arguments");
        return NULL;
    }
    self->state = RECV_DONE;
    PyObject *typ = args[0], *val = nargs > 1 ? args[1] : Py_None, *tb = nargs > 2 ? args[2] : Py_None;
    if (tb != Py_None && !PyTraceBack_Check(tb)) {
        PyErr_SetString(PyExc_TypeError, "throw() third argument must be a traceback object");
        return NULL;
    }
    PyObject *exc;
    if (PyExceptionInstance_Check(typ)) {
        if (val != Py_None) {
            PyErr_SetString(PyExc_TypeError, "instance exception may not have a separate value");
            return NULL;
        }
        exc = Py_NewRef(typ);
    }
    else if (PyExceptionClass_Check(typ)) {
        exc = val == Py_None ? PyObject_CallNoArgs(typ)
              : PyExceptionInstance_Check(val) && PyObject_IsInstance(val, typ) == 1 ? Py_NewRef(val)
              : PyTuple_Check(val) ? PyObject_Call(typ, val, NULL)
              : PyObject_CallOneArg(typ, val);
        if (exc == NULL) {
            return NULL;
        }
    }
    else {
        PyErr_Format(PyExc_TypeError, "exceptions must be classes or instances deriving from BaseException, not %s",
                     Py_TYPE(typ)->tp_name);
        return NULL;
    }
    if (tb != Py_None && PyException_SetTraceback(exc, tb) < 0) {
        Py_DECREF(exc);
        return NULL;
    }
    PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
    Py_DECREF(exc);
    return NULL;
}

static PyObject *
recvcall_close(RecvCall *self, PyObject *unused)
{
    self->state = RECV_DONE;
    Py_RETURN_NONE;
}

static PyObject *
recvcall_await(RecvCall *self)
{
    return Py_NewRef(self);
}

static void
recvcall_dealloc(RecvCall *self)
{
    Py_XDECREF(self->stream);
    Py_XDECREF(self->max_bytes);
    PyObject_Free(self);
}

static PyObject *
recvcall_repr(RecvCall *self)
{
    static const char *states[] = {"fresh", "waiting", "done"};
    return PyUnicode_FromFormat("<recv of %R, %s>", self->stream, states[self->state]);
}

static PyObject *
recvcall_where(RecvCall *self, void *unused)
{
    return PyUnicode_FromString("Stream.recv");
}

static PyGetSetDef recvcall_getset[] = {
    {"where", (getter)recvcall_where, NULL, "The method this call is (for thread dumps, which find no frame).", NULL},
    {NULL},
};

static PyMethodDef recvcall_methods[] = {
    {"send", (PyCFunction)recvcall_send_method, METH_O, "Resume with a value (the events of the wait)."},
    {"throw", (PyCFunction)(void (*)(void))recvcall_throw, METH_FASTCALL, "Raise an exception at the wait."},
    {"close", (PyCFunction)recvcall_close, METH_NOARGS, "End the call."},
    {NULL},
};

static PyAsyncMethods recvcall_async = {
    .am_await = (unaryfunc)recvcall_await,
    .am_send = (sendfunc)recvcall_send,
};

PyTypeObject RecvCallType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "threadlib._kernel._speedups.RecvCall",
    .tp_basicsize = sizeof(RecvCall),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A Stream.recv in progress (sockio.Stream.recv's generator, compiled).",
    .tp_dealloc = (destructor)recvcall_dealloc,
    .tp_repr = (reprfunc)recvcall_repr,
    .tp_as_async = &recvcall_async,
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = (iternextfunc)recvcall_iternext,
    .tp_methods = recvcall_methods,
    .tp_getset = recvcall_getset,
};

PyObject *
call_with_first(PyObject *callable, PyObject *name, PyObject *first, PyObject *const *args, Py_ssize_t nargs,
                PyObject *kwnames)
{
    Py_ssize_t total = nargs + (kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames));
    PyObject *small[8];
    PyObject **all = total + 1 <= 8 ? small : PyMem_New(PyObject *, total + 1);
    if (all == NULL) {
        return PyErr_NoMemory();
    }
    all[0] = first;
    for (Py_ssize_t i = 0; i < total; i++) {
        all[i + 1] = args[i];
    }
    PyObject *r = callable != NULL ? PyObject_Vectorcall(callable, all, (size_t)(nargs + 1), kwnames)
                                   : PyObject_VectorcallMethod(name, all, (size_t)(nargs + 1), kwnames);
    if (all != small) {
        PyMem_Free(all);
    }
    return r;
}

/* The Python method a compiled one stands for, called as the method was:
 * spec(self, *args, **kwargs). */
static PyObject *
call_spec(PyObject *spec, PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    return call_with_first(spec, NULL, self, args, nargs, kwnames);
}

/* Stream.sendall(data, timeout=None), compiled: the first send at the call
 * (EAGAIN counts as nothing sent, with no exception made), DONE when it
 * took everything, else what the Python _send_rest returns for the rest.
 * Under record/replay's socket layer, or for arguments it does not take
 * as given, the Python sendall runs. */
static PyObject *stream_sendall_spec;  /* sockio.Stream.sendall, the Python function */
static PyObject *plain_sock_send;      /* this module's sock_send: the default layer's */
static PyObject *done_awaitable;       /* sockio's DONE */
static PyObject *s__send, *s__send_rest, *s_timeout;

static PyObject *
stream_sendall(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *layer = PyDict_GetItemWithError(sockio_namespace, s__send);
    if (layer == NULL && PyErr_Occurred()) {
        return NULL;
    }
    /* sendall(data), sendall(data, timeout) or sendall(data, timeout=t):
     * the web server passes its send timeout by keyword at every send. */
    int timeout_by_name = kwnames != NULL && PyTuple_GET_SIZE(kwnames) == 1 && nargs == 1 &&
                          PyUnicode_Compare(PyTuple_GET_ITEM(kwnames, 0), s_timeout) == 0;
    if ((kwnames != NULL && !timeout_by_name) || nargs < 1 || nargs > 2 || layer != plain_sock_send) {
        return call_spec(stream_sendall_spec, self, args, nargs, kwnames);
    }
    PyObject *data = args[0], *timeout = nargs == 2 || timeout_by_name ? args[1] : Py_None;
    PyObject *sock = stream_slot(self, off_stream_sock, s__sock);
    if (sock == NULL) {
        return NULL;
    }
    int again = 0;
    PyObject *count = do_send(NULL, sock, data, &again);  /* EAGAIN: nothing sent, no exception */
    if (count == NULL && !again) {
        return NULL;
    }
    if (count == NULL) {
        count = PyLong_FromLong(0);  /* EAGAIN: nothing sent */
        if (count == NULL) {
            return NULL;
        }
    }
    Py_ssize_t n = PyLong_AsSsize_t(count);
    Py_ssize_t length = n < 0 ? -1 : PyObject_Length(data);  /* len(data), as the Python sendall compares */
    if (length < 0) {
        Py_DECREF(count);
        return NULL;
    }
    if (n == length) {
        Py_DECREF(count);
        return Py_NewRef(done_awaitable);
    }
    PyObject *rest = PyObject_CallMethodObjArgs(self, s__send_rest, data, count, timeout, NULL);
    Py_DECREF(count);
    return rest;
}

/* Stream.recv(max_bytes=65536, timeout=None): a RecvCall, or what the
 * Python recv returns for every case the RecvCall does not cover. */
static PyObject *
stream_recv(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *layer = PyDict_GetItemWithError(sockio_namespace, s__recv);
    if (layer == NULL && PyErr_Occurred()) {
        return NULL;
    }
    if (kwnames != NULL || nargs > 2 || (nargs == 2 && args[1] != Py_None) || layer != plain_sock_recv) {
        return call_spec(stream_recv_spec, self, args, nargs, kwnames);
    }
    RecvCall *call = PyObject_New(RecvCall, &RecvCallType);
    if (call == NULL) {
        return NULL;
    }
    call->stream = Py_NewRef(self);
    call->max_bytes = Py_NewRef(nargs >= 1 ? args[0] : default_max_bytes);
    call->state = RECV_FRESH;
    return (PyObject *)call;
}

/* The compiled methods and their Python specifications; each method's
 * doc is its spec's signature and docstring, kept for the method's life. */
static PyMethodDef stream_recv_def = {
    "recv", (PyCFunction)(void (*)(void))stream_recv, METH_FASTCALL | METH_KEYWORDS, NULL,
};
static PyMethodDef stream_sendall_def = {
    "sendall", (PyCFunction)(void (*)(void))stream_sendall, METH_FASTCALL | METH_KEYWORDS, NULL,
};

/* slot_offset for a slot of the type or of a base that defines it. */
static int
inherited_slot_offset(PyTypeObject *type, const char *name, Py_ssize_t *offset)
{
    for (PyTypeObject *t = type; t != NULL; t = t->tp_base) {
        if (PyDict_GetItemString(t->tp_dict, name) != NULL) {
            return slot_offset(t, name, offset);
        }
    }
    PyErr_Format(PyExc_TypeError, "configure: %s has no slot %s", type->tp_name, name);
    return -1;
}

/* Replace type.NAME (a Python function) by the compiled method `def`; the
 * function becomes type._NAME_spec and *spec_out (a new reference). */
int
install_method(PyTypeObject *type, PyMethodDef *def, const char *signature, PyObject **spec_out)
{
    PyObject *spec = PyDict_GetItemString(type->tp_dict, def->ml_name);
    if (spec == NULL || !PyFunction_Check(spec)) {
        PyErr_Format(PyExc_TypeError, "configuring %s.%s: it is not the Python function", type->tp_name,
                     def->ml_name);
        return -1;
    }
    Py_INCREF(spec);  /* setting the attribute below drops the class's reference */
    if (def->ml_doc == NULL) {
        PyObject *doc = PyObject_GetAttrString(spec, "__doc__");
        const char *text = doc != NULL && PyUnicode_Check(doc) ? PyUnicode_AsUTF8(doc) : "";
        char *both = text == NULL ? NULL : PyMem_RawMalloc(strlen(signature) + strlen(text) + 1);
        if (both == NULL) {
            Py_XDECREF(doc);
            Py_DECREF(spec);
            if (!PyErr_Occurred()) {
                PyErr_NoMemory();
            }
            return -1;
        }
        strcpy(both, signature);
        strcat(both, text);
        Py_XDECREF(doc);
        def->ml_doc = both;
    }
    PyObject *method = PyDescr_NewMethod(type, def);
    char spec_name[64];
    PyOS_snprintf(spec_name, sizeof spec_name, "_%s_spec", def->ml_name);
    if (method == NULL || PyObject_SetAttrString((PyObject *)type, spec_name, spec) < 0 ||
        PyObject_SetAttrString((PyObject *)type, def->ml_name, method) < 0) {
        Py_XDECREF(method);
        Py_DECREF(spec);
        return -1;
    }
    Py_DECREF(method);
    Py_XSETREF(*spec_out, spec);
    return 0;
}

/* configure_stream(Stream, sockio_globals): Stream.recv and Stream.sendall
 * become the compiled methods; the Python functions they replace stay
 * their specifications and fallbacks (Stream._recv_spec, _sendall_spec). */
static PyObject *
configure_stream(PyObject *module, PyObject *args)
{
    PyObject *stream, *namespace;
    if (!PyArg_ParseTuple(args, "O!O!:configure_stream", &PyType_Type, &stream, &PyDict_Type, &namespace)) {
        return NULL;
    }
    PyTypeObject *type = (PyTypeObject *)stream;
    PyObject *hang_up = PyDict_GetItemString(namespace, "_HANG_UP");
    PyObject *recv_layer = PyDict_GetItemString(namespace, "_recv");
    PyObject *send_layer = PyDict_GetItemString(namespace, "_send");
    PyObject *done = PyDict_GetItemString(namespace, "DONE");
    if (hang_up == NULL || !PyLong_Check(hang_up) || recv_layer == NULL || send_layer == NULL || done == NULL) {
        PyErr_SetString(PyExc_TypeError, "configure_stream: sockio's _HANG_UP, _recv, _send or DONE is missing");
        return NULL;
    }
    if (inherited_slot_offset(type, "_drained", &off_stream_drained) < 0 ||
        inherited_slot_offset(type, "_hung_up", &off_stream_hung_up) < 0 ||
        inherited_slot_offset(type, "_sock", &off_stream_sock) < 0 ||
        inherited_slot_offset(type, "_wait_read", &off_stream_wait_read) < 0) {
        return NULL;
    }
    hang_up_events = PyLong_AsLong(hang_up);
    if (default_max_bytes == NULL && (default_max_bytes = PyLong_FromLong(65536)) == NULL) {
        return NULL;
    }
    Py_XSETREF(sockio_namespace, Py_NewRef(namespace));
    Py_XSETREF(plain_sock_recv, Py_NewRef(recv_layer));
    Py_XSETREF(plain_sock_send, Py_NewRef(send_layer));
    Py_XSETREF(done_awaitable, Py_NewRef(done));
    if (install_method(type, &stream_recv_def, "recv($self, /, max_bytes=65536, timeout=None)\n--\n\n",
                       &stream_recv_spec) < 0 ||
        install_method(type, &stream_sendall_def, "sendall($self, /, data, timeout=None)\n--\n\n",
                       &stream_sendall_spec) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* -- the poll step: Scheduler._poll, compiled ----------------------------------
 *
 * Scheduler._poll (scheduler.py, its specification) for its common case:
 * the scheduler's poller is the EpollPoller. It asks the timed workers for
 * their deadlines (a TimerWorker's earliest live entry is read in place; any
 * other case calls next_deadline), waits in epoll_wait for at most the time
 * to the nearest one (with the GIL released unless the timeout is zero),
 * runs the callbacks of the fds that fired, and expires the workers whose
 * deadline has come, calling the clock and the workers exactly where _poll
 * does. Every other poller and the simulator's no-poller case run the Python
 * _poll itself. This is the one place in this module that blocks, and only
 * where the Python _poll would: in the poller's wait.
 *
 * An epoll_wait cut short by a signal runs the Python signal handlers (an
 * exception from one comes out, as from select.epoll.poll) and counts as a
 * poll with no event: the scheduler comes round and polls again. */
static PyObject *poll_spec;              /* Scheduler._poll, the function */
static PyTypeObject *epoll_poller_type;  /* pollers.EpollPoller */
static PyTypeObject *timer_worker_type;  /* timers.TimerWorker */
static Py_ssize_t off_poller_fd, off_poller_callbacks;
static PyObject *s_clock, *s__poller, *s__timed, *s_virtual, *s_now, *s_next_deadline, *s_expire, *s__heap,
    *s_advance_to, *s__any_worker_busy, *s__deadlock;

/* select.epoll.poll's own batch (FD_SETSIZE - 1 events a call), so that the
 * events come in the batches the Python poller gets. */
#define POLL_BATCH 1023

/* A timed worker's next_deadline(): 1 with the deadline in *when and its
 * object in *obj (a new reference), 0 for None, -1 on an error. */
static int
worker_deadline(PyObject *w, double *when, PyObject **obj)
{
    PyObject *d = NULL;
    if (Py_IS_TYPE(w, timer_worker_type)) {
        /* TimerWorker.next_deadline when its earliest entry is live (or the
         * heap is empty): nothing to pop, so nothing but a read. */
        PyObject *heap = PyObject_GetAttr(w, s__heap);
        if (heap == NULL) {
            return -1;
        }
        if (PyList_CheckExact(heap)) {
            if (PyList_GET_SIZE(heap) == 0) {
                Py_DECREF(heap);
                return 0;
            }
            PyObject *first = PyList_GET_ITEM(heap, 0);
            if (PyList_CheckExact(first) && PyList_GET_SIZE(first) >= 3 && PyList_GET_ITEM(first, 2) != Py_None) {
                d = Py_NewRef(PyList_GET_ITEM(first, 0));
            }
        }
        Py_DECREF(heap);
    }
    if (d == NULL) {
        d = PyObject_CallMethodNoArgs(w, s_next_deadline);
        if (d == NULL) {
            return -1;
        }
        if (d == Py_None) {
            Py_DECREF(d);
            return 0;
        }
    }
    *when = PyFloat_AsDouble(d);
    if (*when == -1.0 && PyErr_Occurred()) {
        Py_DECREF(d);
        return -1;
    }
    *obj = d;
    return 1;
}

/* clock.now() as a double, or -1 with an exception (*failed set). */
static double
clock_now(PyObject *clock, PyObject **now_obj, int *failed)
{
    PyObject *now = PyObject_CallMethodNoArgs(clock, s_now);
    *failed = 1;
    if (now == NULL) {
        return -1.0;
    }
    double value = PyFloat_AsDouble(now);
    if (value == -1.0 && PyErr_Occurred()) {
        Py_DECREF(now);
        return -1.0;
    }
    *failed = 0;
    if (now_obj != NULL) {
        *now_obj = now;
    }
    else {
        Py_DECREF(now);
    }
    return value;
}

/* EpollPoller.poll(timeout) with the timeout in milliseconds (-1: none):
 * the number of events, or -1 with an exception. */
static int
epoll_poller_poll(PyObject *poller, int timeout_ms)
{
    PyObject *fd_obj = *(PyObject **)((char *)poller + off_poller_fd);
    PyObject *callbacks = *(PyObject **)((char *)poller + off_poller_callbacks);
    if (fd_obj == NULL || callbacks == NULL || !PyDict_Check(callbacks)) {
        PyErr_SetString(PyExc_ValueError, "EpollPoller is not set up");
        return -1;
    }
    long epfd = PyLong_AsLong(fd_obj);
    if (epfd == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (epfd < 0 || epfd > INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "I/O operation on closed epoll object");
        return -1;
    }
    struct epoll_event events[POLL_BATCH];
    int n;
    if (timeout_ms == 0) {
        n = epoll_wait(epfd, events, POLL_BATCH, 0);  /* cannot block: the GIL stays */
    }
    else {
        Py_BEGIN_ALLOW_THREADS
        n = epoll_wait(epfd, events, POLL_BATCH, timeout_ms);
        Py_END_ALLOW_THREADS
    }
    if (n < 0) {
        if (errno == EINTR) {
            return PyErr_CheckSignals() < 0 ? -1 : 0;
        }
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    Py_INCREF(callbacks);  /* a callback may replace or empty it */
    for (int i = 0; i < n; i++) {
        PyObject *key = PyLong_FromLong(events[i].data.fd);
        if (key == NULL) {
            goto fail;
        }
        PyObject *callback = PyDict_GetItemWithError(callbacks, key);
        Py_DECREF(key);
        if (callback == NULL) {
            if (PyErr_Occurred()) {
                goto fail;
            }
            continue;  /* unregistered by an earlier callback of this batch */
        }
        Py_INCREF(callback);  /* it may unregister itself */
        PyObject *fired = PyLong_FromUnsignedLong(events[i].events);
        if (fired == NULL) {
            Py_DECREF(callback);
            goto fail;
        }
        PyObject *r = PyObject_CallOneArg(callback, fired);
        Py_DECREF(fired);
        Py_DECREF(callback);
        if (r == NULL) {
            goto fail;
        }
        Py_DECREF(r);
    }
    Py_DECREF(callbacks);
    return n;
fail:
    Py_DECREF(callbacks);
    return -1;
}

/* clock.virtual as 1 or 0, or -1 with an exception: read only where _poll
 * reads it, since a clock's virtual may be a property. */
static int
clock_virtual(PyObject *clock)
{
    PyObject *v = PyObject_GetAttr(clock, s_virtual);
    int virtual = v == NULL ? -1 : PyObject_IsTrue(v);
    Py_XDECREF(v);
    return virtual;
}

static PyObject *
poll_step(PyObject *module, PyObject *sched)
{
    if (poll_spec == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "poll: configure_poll() was not called");
        return NULL;
    }
    PyObject *poller = PyObject_GetAttr(sched, s__poller);
    if (poller == NULL) {
        return NULL;
    }
    if (!Py_IS_TYPE(poller, epoll_poller_type)) {
        Py_DECREF(poller);
        return PyObject_CallOneArg(poll_spec, sched);
    }
    PyObject *clock = NULL, *timed = NULL, *ready = NULL, *deadline = NULL, *now_obj = NULL;
    PyObject *result = NULL;
    double deadline_at = 0.0;
    int failed, virtual = -1;  /* clock.virtual, read when _poll reads it */
    clock = PyObject_GetAttr(sched, s_clock);
    timed = clock == NULL ? NULL : PyObject_GetAttr(sched, s__timed);
    if (timed == NULL) {
        goto done;
    }
    if (!PyList_CheckExact(timed)) {
        PyErr_SetString(PyExc_TypeError, "poll: Scheduler._timed is not a list");
        goto done;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(timed); i++) {
        PyObject *w = Py_NewRef(PyList_GET_ITEM(timed, i));
        double when;
        PyObject *obj;
        int r = worker_deadline(w, &when, &obj);
        Py_DECREF(w);
        if (r < 0) {
            goto done;
        }
        if (r > 0) {
            if (deadline == NULL || when < deadline_at) {
                Py_XSETREF(deadline, obj);
                deadline_at = when;
            }
            else {
                Py_DECREF(obj);
            }
        }
    }
    ready = PyObject_GetAttr(sched, s_ready);
    if (ready == NULL) {
        goto done;
    }
    int any_ready = PyObject_IsTrue(ready);
    if (any_ready < 0) {
        goto done;
    }
    int timeout_ms;
    if (any_ready) {
        timeout_ms = 0;
    }
    else if (deadline != NULL) {
        virtual = clock_virtual(clock);
        if (virtual < 0) {
            goto done;
        }
        if (virtual) {
            timeout_ms = 0;
        }
        else {
            double now = clock_now(clock, NULL, &failed);
            if (failed) {
                goto done;
            }
            /* select.epoll.poll's rounding: up to the next millisecond. */
            double ms = ceil((deadline_at - now) * 1e3);
            timeout_ms = ms <= 0.0 ? 0 : ms >= (double)INT_MAX ? INT_MAX : (int)ms;
        }
    }
    else {
        timeout_ms = -1;
        PyObject *busy = PyObject_CallMethodNoArgs(sched, s__any_worker_busy);
        int is_busy = busy == NULL ? -1 : PyObject_IsTrue(busy);
        Py_XDECREF(busy);
        if (is_busy < 0) {
            goto done;
        }
        if (!is_busy) {
            /* Nothing could wake a thread: no deadline, no fd of use. */
            result = PyObject_CallMethodNoArgs(sched, s__deadlock);
            if (result != NULL) {
                Py_SETREF(result, Py_NewRef(Py_None));
            }
            goto done;
        }
    }
    int events = epoll_poller_poll(poller, timeout_ms);
    if (events < 0) {
        goto done;
    }
    if (deadline != NULL) {
        if (virtual < 0 && (virtual = clock_virtual(clock)) < 0) {
            goto done;
        }
        if (virtual && !events) {
            int still = PyObject_IsTrue(ready);
            if (still < 0) {
                goto done;
            }
            if (!still) {
                PyObject *r = PyObject_CallMethodOneArg(clock, s_advance_to, deadline);
                if (r == NULL) {
                    goto done;
                }
                Py_DECREF(r);
            }
        }
        double now = clock_now(clock, &now_obj, &failed);
        if (failed) {
            goto done;
        }
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(timed); i++) {
            PyObject *w = Py_NewRef(PyList_GET_ITEM(timed, i));
            double when;
            PyObject *obj;
            int r = worker_deadline(w, &when, &obj);
            if (r > 0) {
                Py_DECREF(obj);
                if (when <= now) {
                    PyObject *e = PyObject_CallMethodOneArg(w, s_expire, now_obj);
                    if (e == NULL) {
                        r = -1;
                    }
                    Py_XDECREF(e);
                }
            }
            Py_DECREF(w);
            if (r < 0) {
                goto done;
            }
        }
    }
    result = Py_NewRef(Py_None);
done:
    Py_DECREF(poller);
    Py_XDECREF(clock);
    Py_XDECREF(timed);
    Py_XDECREF(ready);
    Py_XDECREF(deadline);
    Py_XDECREF(now_obj);
    return result;
}

static PyObject *
configure_poll(PyObject *module, PyObject *args)
{
    PyObject *spec, *poller, *timers;
    if (!PyArg_ParseTuple(args, "O!O!O!:configure_poll", &PyFunction_Type, &spec, &PyType_Type, &poller,
                          &PyType_Type, &timers)) {
        return NULL;
    }
    if (slot_offset((PyTypeObject *)poller, "_fd", &off_poller_fd) < 0 ||
        slot_offset((PyTypeObject *)poller, "_callbacks", &off_poller_callbacks) < 0) {
        return NULL;
    }
    Py_XSETREF(poll_spec, Py_NewRef(spec));
    Py_XSETREF(epoll_poller_type, (PyTypeObject *)Py_NewRef(poller));
    Py_XSETREF(timer_worker_type, (PyTypeObject *)Py_NewRef(timers));
    Py_RETURN_NONE;
}

/* -- record/replay: the log reader -------------------------------------------
 *
 * LogCore: threadlib/replay/log.py's _ReaderCore (its specification) in C,
 * the base of LogReader when this module is built: a window of the log file
 * (`data`, the file offset of its first byte `base`, the next byte `pos`),
 * the primitives (uint, sint, u32, f64, blob, text, kind, begin, peek,
 * at_end, _take, _fill) with the same values and the same LogError messages
 * and offsets, and the per-record decoders the player calls once per record
 * (clock, handler, poll, sock_result, check_sent). A decoder either reads a
 * whole record of the common kind and returns what it holds, or, on
 * anything else (another record, a mismatch, a rare value tag, a record cut
 * short), puts the reader back where it was and returns None: the player's
 * Python then reads that record with the primitives and says what is wrong.
 * The window keeps the current record's bytes (from record_start) so that a
 * decoder can always go back. */

#define REC_CLOCK 3
#define REC_WALL 4
#define REC_END 6
#define REC_USER 7
#define REC_DEVIN 8
#define REC_DEVOUT 9
#define REC_UCLOCK 10
#define REC_USERSTATE 11
#define REC_T_BYTES 2
#define REC_T_STR 3
#define REC_T_OSERROR 5
#define REC_T_SCOPE 7
#define OP_NEW 1
#define OP_SENDFILE 15
#define OP_CONNECT 6
#define OP_CONNECT_EX 7
#define OP_BIND 8
#define OP_LISTEN 9
#define OP_SETSOCKOPT 10
#define OP_SHUTDOWN 14
#define OP_SENDTO 17

static PyObject *log_error_class;     /* log.LogError */
static PyObject *scope_raised_class;  /* log.ScopeRaised */
static PyObject *s_threadlib_replayed;

typedef struct {
    PyObject_HEAD
    PyObject *file;
    PyObject *data;           /* bytes: the window */
    Py_ssize_t pos;           /* the next byte, in data */
    Py_ssize_t base;          /* the file offset of data[0] */
    Py_ssize_t chunk;
    Py_ssize_t record_start;  /* the file offset of the record being read */
    Py_ssize_t records;       /* records begun */
} LogCore;

static int
core_kind_known(int kind)
{
    return kind >= 1 && kind <= 11;
}

/* Raise LogError(message, offset); always NULL. */
static PyObject *
core_error(PyObject *message, Py_ssize_t offset)
{
    if (message == NULL) {
        return NULL;
    }
    if (log_error_class == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "the log reader is not configured (log_configure)");
        Py_DECREF(message);
        return NULL;
    }
    PyObject *exc = PyObject_CallFunction(log_error_class, "On", message, offset);
    Py_DECREF(message);
    if (exc != NULL) {
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        Py_DECREF(exc);
    }
    return NULL;
}

static PyObject *
core_cut_short(LogCore *self, const char *what)
{
    return core_error(PyUnicode_FromFormat("the log ends inside %s (it was cut short or damaged)", what),
                      self->record_start);
}

/* Keep at least `need` bytes after pos, reading more of the file: 1, 0 at
 * the end of the file, -1 on error. */
static int
core_fill(LogCore *self, Py_ssize_t need)
{
    while (PyBytes_GET_SIZE(self->data) - self->pos < need) {
        PyObject *more = PyObject_CallMethod(self->file, "read", "n", self->chunk > need ? self->chunk : need);
        if (more == NULL) {
            return -1;
        }
        Py_buffer view;
        if (PyObject_GetBuffer(more, &view, PyBUF_SIMPLE) < 0) {
            Py_DECREF(more);
            return -1;
        }
        if (view.len == 0) {
            PyBuffer_Release(&view);
            Py_DECREF(more);
            return 0;
        }
        Py_ssize_t keep = self->record_start - self->base;
        if (keep > self->pos || keep < 0) {
            keep = self->pos;
        }
        Py_ssize_t rest = PyBytes_GET_SIZE(self->data) - keep;
        PyObject *data = PyBytes_FromStringAndSize(NULL, rest + view.len);
        if (data == NULL) {
            PyBuffer_Release(&view);
            Py_DECREF(more);
            return -1;
        }
        memcpy(PyBytes_AS_STRING(data), PyBytes_AS_STRING(self->data) + keep, (size_t)rest);
        memcpy(PyBytes_AS_STRING(data) + rest, view.buf, (size_t)view.len);
        PyBuffer_Release(&view);
        Py_DECREF(more);
        Py_SETREF(self->data, data);
        self->base += keep;
        self->pos -= keep;
    }
    return 1;
}

static inline const unsigned char *
core_at(LogCore *self)
{
    return (const unsigned char *)PyBytes_AS_STRING(self->data) + self->pos;
}

/* n bytes, or NULL: at the end of the data (*short set, no exception) or on
 * an error. */
static const unsigned char *
core_get(LogCore *self, Py_ssize_t n, int *cut)
{
    *cut = 0;
    if (PyBytes_GET_SIZE(self->data) - self->pos < n) {
        int got = core_fill(self, n);
        if (got <= 0) {
            *cut = got == 0;
            return NULL;
        }
    }
    const unsigned char *p = core_at(self);
    self->pos += n;
    return p;
}

/* An unsigned varint: 1 with *out (and *big NULL) when it fits 63 bits, 1
 * with *big (a new int) when longer, 0 when the data ends inside it, -2 when
 * it is too long, -1 on error. */
static int
core_varint(LogCore *self, unsigned long long *out, PyObject **big)
{
    unsigned char groups[11];
    int count = 0;
    *big = NULL;
    for (;;) {
        if (self->pos >= PyBytes_GET_SIZE(self->data)) {
            int got = core_fill(self, 1);
            if (got <= 0) {
                return got;
            }
        }
        unsigned char b = core_at(self)[0];
        self->pos++;
        groups[count++] = b & 0x7F;
        if (b < 0x80) {
            break;
        }
        if (7 * count > 70) {
            return -2;
        }
    }
    if (count <= 9) {
        unsigned long long n = 0;
        for (int i = count - 1; i >= 0; i--) {
            n = (n << 7) | groups[i];
        }
        *out = n;
        return 1;
    }
    PyObject *n = PyLong_FromLong(0);
    for (int i = count - 1; i >= 0 && n != NULL; i--) {
        PyObject *seven = PyLong_FromLong(7), *g = PyLong_FromLong(groups[i]);
        PyObject *shifted = (seven && g) ? PyNumber_Lshift(n, seven) : NULL;
        PyObject *next = shifted ? PyNumber_Or(shifted, g) : NULL;
        Py_XDECREF(seven);
        Py_XDECREF(g);
        Py_XDECREF(shifted);
        Py_SETREF(n, next);
    }
    if (n == NULL) {
        return -1;
    }
    *big = n;
    return 1;
}

/* core_varint for the primitives: a new int, or NULL with LogError. */
static PyObject *
core_uint_obj(LogCore *self)
{
    unsigned long long n;
    PyObject *big;
    int r = core_varint(self, &n, &big);
    if (r == 1) {
        return big != NULL ? big : PyLong_FromUnsignedLongLong(n);
    }
    if (r == 0) {
        return core_error(PyUnicode_FromString("the log ends inside a record (it was cut short or damaged)"),
                          self->record_start);
    }
    if (r == -2) {
        return core_error(PyUnicode_FromString("a number in a record is too long (damaged log)"),
                          self->record_start);
    }
    return NULL;
}

static PyObject *
core_take_obj(LogCore *self, Py_ssize_t n, const char *what)
{
    int cut;
    const unsigned char *p = core_get(self, n, &cut);
    if (p == NULL) {
        return cut ? core_cut_short(self, what) : NULL;
    }
    return PyBytes_FromStringAndSize((const char *)p, n);
}

static PyObject *
core_blob_obj(LogCore *self)
{
    PyObject *n = core_uint_obj(self);
    if (n == NULL) {
        return NULL;
    }
    int overflow;
    long long size = PyLong_AsLongLongAndOverflow(n, &overflow);
    if (overflow || size > (1LL << 31)) {
        return core_error(PyUnicode_FromFormat("a byte string of %S bytes (damaged log)", n), self->record_start);
    }
    Py_DECREF(n);
    return core_take_obj(self, (Py_ssize_t)size, "a record");
}

static int
logcore_init(LogCore *self, PyObject *args, PyObject *kwds)
{
    PyObject *file;
    Py_ssize_t chunk = 1 << 16;
    static char *kwlist[] = {"file", "chunk", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|n:LogCore", kwlist, &file, &chunk)) {
        return -1;
    }
    PyObject *empty = PyBytes_FromStringAndSize(NULL, 0);
    if (empty == NULL) {
        return -1;
    }
    Py_XSETREF(self->file, Py_NewRef(file));
    Py_XSETREF(self->data, empty);
    self->pos = self->base = self->record_start = self->records = 0;
    self->chunk = chunk > 0 ? chunk : 1;
    return 0;
}

static int
logcore_traverse(LogCore *self, visitproc visit, void *arg)
{
    Py_VISIT(self->file);
    return 0;
}

static int
logcore_clear(LogCore *self)
{
    Py_CLEAR(self->file);
    Py_CLEAR(self->data);
    return 0;
}

static void
logcore_dealloc(LogCore *self)
{
    PyObject_GC_UnTrack(self);
    logcore_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
core_ready(LogCore *self)
{
    if (self->data == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "LogCore.__init__ was not called");
        return -1;
    }
    return 0;
}

#define READY(self) if (core_ready(self) < 0) return NULL

static PyObject *
logcore_fill(LogCore *self, PyObject *arg)
{
    READY(self);
    Py_ssize_t need = PyLong_AsSsize_t(arg);
    if (need == -1 && PyErr_Occurred()) {
        return NULL;
    }
    int got = core_fill(self, need);
    return got < 0 ? NULL : PyBool_FromLong(got);
}

static PyObject *
logcore_take(LogCore *self, PyObject *const *args, Py_ssize_t nargs)
{
    READY(self);
    if (nargs < 1 || nargs > 2 || (nargs == 2 && !PyUnicode_Check(args[1]))) {
        PyErr_SetString(PyExc_TypeError, "_take(n, what='a record')");
        return NULL;
    }
    Py_ssize_t n = PyLong_AsSsize_t(args[0]);
    if (n == -1 && PyErr_Occurred()) {
        return NULL;
    }
    const char *what = nargs == 2 ? PyUnicode_AsUTF8(args[1]) : "a record";
    return what == NULL ? NULL : core_take_obj(self, n, what);
}

static PyObject *
logcore_at_end(LogCore *self, PyObject *unused)
{
    READY(self);
    int got = core_fill(self, 1);
    return got < 0 ? NULL : PyBool_FromLong(!got);
}

static PyObject *
logcore_peek(LogCore *self, PyObject *unused)
{
    READY(self);
    int got = core_fill(self, 1);
    if (got < 0) {
        return NULL;
    }
    return PyLong_FromLong(got ? core_at(self)[0] : -1);
}

static PyObject *
logcore_kind(LogCore *self, PyObject *unused)
{
    READY(self);
    int got = core_fill(self, 1);
    if (got <= 0) {
        return got < 0 ? NULL : PyLong_FromLong(0);
    }
    int kind = core_at(self)[0];
    if (!core_kind_known(kind)) {
        return core_error(PyUnicode_FromFormat("unknown record kind %d", kind), self->base + self->pos);
    }
    return PyLong_FromLong(kind);
}

/* begin(): -1 on error (LogError set), else the kind. */
static int
core_begin(LogCore *self)
{
    self->record_start = self->base + self->pos;
    int cut;
    const unsigned char *p = core_get(self, 1, &cut);
    if (p == NULL) {
        if (cut) {
            core_cut_short(self, "a record");
        }
        return -1;
    }
    int kind = p[0];
    if (!core_kind_known(kind)) {
        core_error(PyUnicode_FromFormat("unknown record kind %d", kind), self->record_start);
        return -1;
    }
    self->records++;
    return kind;
}

static PyObject *
logcore_begin(LogCore *self, PyObject *unused)
{
    READY(self);
    int kind = core_begin(self);
    return kind < 0 ? NULL : PyLong_FromLong(kind);
}

static PyObject *
logcore_uint(LogCore *self, PyObject *unused)
{
    READY(self);
    return core_uint_obj(self);
}

static PyObject *
zigzag_obj(PyObject *n)
{
    /* (n >> 1) if not n & 1 else -((n + 1) >> 1), on a Python int */
    PyObject *one_ = PyLong_FromLong(1);
    if (one_ == NULL) {
        return NULL;
    }
    PyObject *odd = PyNumber_And(n, one_), *result = NULL;
    if (odd != NULL) {
        int is_odd = PyObject_IsTrue(odd);
        if (!is_odd) {
            result = PyNumber_Rshift(n, one_);
        }
        else {
            PyObject *plus = PyNumber_Add(n, one_);
            PyObject *half = plus ? PyNumber_Rshift(plus, one_) : NULL;
            result = half ? PyNumber_Negative(half) : NULL;
            Py_XDECREF(plus);
            Py_XDECREF(half);
        }
        Py_DECREF(odd);
    }
    Py_DECREF(one_);
    return result;
}

static PyObject *
logcore_sint(LogCore *self, PyObject *unused)
{
    READY(self);
    PyObject *n = core_uint_obj(self);
    if (n == NULL) {
        return NULL;
    }
    PyObject *r = zigzag_obj(n);
    Py_DECREF(n);
    return r;
}

static PyObject *
logcore_u32(LogCore *self, PyObject *unused)
{
    READY(self);
    int cut;
    const unsigned char *p = core_get(self, 4, &cut);
    if (p == NULL) {
        return cut ? core_cut_short(self, "a record") : NULL;
    }
    return PyLong_FromUnsignedLong((unsigned long)p[0] | ((unsigned long)p[1] << 8) |
                                   ((unsigned long)p[2] << 16) | ((unsigned long)p[3] << 24));
}

static PyObject *
logcore_f64(LogCore *self, PyObject *unused)
{
    READY(self);
    int cut;
    const unsigned char *p = core_get(self, 8, &cut);
    if (p == NULL) {
        return cut ? core_cut_short(self, "a record") : NULL;
    }
    double x = PyFloat_Unpack8((const char *)p, 1);
    return x == -1.0 && PyErr_Occurred() ? NULL : PyFloat_FromDouble(x);
}

static PyObject *
logcore_blob(LogCore *self, PyObject *unused)
{
    READY(self);
    return core_blob_obj(self);
}

static PyObject *
logcore_text(LogCore *self, PyObject *unused)
{
    READY(self);
    PyObject *blob = core_blob_obj(self);
    if (blob == NULL) {
        return NULL;
    }
    PyObject *text = PyUnicode_DecodeUTF8(PyBytes_AS_STRING(blob), PyBytes_GET_SIZE(blob), "surrogateescape");
    Py_DECREF(blob);
    return text;
}

/* -- the per-record decoders ---------------------------------------------------
 * Each returns 1 with what it decoded, 0 to give up (the reader is put back
 * by the caller), -1 on an error that is not the log's (memory, the file). */

typedef struct {
    Py_ssize_t offset, record_start, records;
} CoreMark;

static CoreMark
core_mark(LogCore *self)
{
    CoreMark m = {self->base + self->pos, self->record_start, self->records};
    return m;
}

/* Put the reader back at the mark: None (nothing decoded), or NULL when an
 * error is pending (never the log's: the decoders give up on those). */
static PyObject *
core_back(LogCore *self, CoreMark m)
{
    self->pos = m.offset - self->base;
    self->record_start = m.record_start;
    self->records = m.records;
    if (PyErr_Occurred()) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static int
dec_uint(LogCore *self, unsigned long long *out)
{
    PyObject *big;
    int r = core_varint(self, out, &big);
    if (r == 1 && big != NULL) {
        Py_DECREF(big);
        return 0;
    }
    return r == -2 ? 0 : r;
}

static int
dec_bytes(LogCore *self, const unsigned char **p, Py_ssize_t *n)
{
    unsigned long long size;
    int r = dec_uint(self, &size);
    if (r <= 0) {
        return r;
    }
    if (size > (1ULL << 31)) {
        return 0;
    }
    int cut;
    *p = core_get(self, (Py_ssize_t)size, &cut);
    *n = (Py_ssize_t)size;
    return *p == NULL ? (cut ? 0 : -1) : 1;
}

static int
dec_blob(LogCore *self, PyObject **out)
{
    const unsigned char *p;
    Py_ssize_t n;
    int r = dec_bytes(self, &p, &n);
    if (r <= 0) {
        return r;
    }
    *out = PyBytes_FromStringAndSize((const char *)p, n);
    return *out == NULL ? -1 : 1;
}

/* An outcome of the common kinds: None, an int, bytes, a str; an OSError;
 * a cancel scope's. *value and *exc are new references (one of them None). */
static int
dec_outcome(LogCore *self, PyObject **value, PyObject **exc)
{
    int cut;
    const unsigned char *p = core_get(self, 1, &cut);
    if (p == NULL) {
        return cut ? 0 : -1;
    }
    int tag = p[0];
    unsigned long long n;
    int r;
    *value = *exc = NULL;
    switch (tag) {
    case REC_T_NONE:
        *value = Py_NewRef(Py_None);
        break;
    case REC_T_INT:
        if ((r = dec_uint(self, &n)) <= 0) {
            return r;
        }
        *value = (n & 1) ? PyLong_FromLongLong(-(long long)((n >> 1) + 1)) : PyLong_FromUnsignedLongLong(n >> 1);
        break;
    case REC_T_BYTES:
        if ((r = dec_blob(self, value)) <= 0) {
            return r;
        }
        break;
    case REC_T_STR: {
        const unsigned char *s;
        Py_ssize_t len;
        if ((r = dec_bytes(self, &s, &len)) <= 0) {
            return r;
        }
        *value = PyUnicode_DecodeUTF8((const char *)s, len, "surrogateescape");
        break;
    }
    case REC_T_OSERROR: {
        if ((r = dec_uint(self, &n)) <= 0) {
            return r;
        }
        if (!(n > 0 && n < 4096)) {
            return 0;
        }
        const unsigned char *s;
        Py_ssize_t len;
        if ((r = dec_bytes(self, &s, &len)) <= 0) {
            return r;
        }
        PyObject *text = len ? PyUnicode_DecodeUTF8((const char *)s, len, "surrogateescape")
                             : PyUnicode_DecodeLocale(strerror((int)n), "surrogateescape");
        if (text == NULL) {
            return -1;
        }
        PyObject *e = PyObject_CallFunction(PyExc_OSError, "iO", (int)n, text);
        Py_DECREF(text);
        if (e == NULL || PyObject_SetAttr(e, s_threadlib_replayed, Py_True) < 0) {
            Py_XDECREF(e);
            return -1;
        }
        *exc = e;
        *value = Py_NewRef(Py_None);
        return 1;
    }
    case REC_T_SCOPE:
        if ((r = dec_uint(self, &n)) <= 0) {
            return r;
        }
        *exc = PyObject_CallFunction(scope_raised_class, "K", n);
        if (*exc == NULL) {
            return -1;
        }
        *value = Py_NewRef(Py_None);
        return 1;
    default:
        return 0;
    }
    if (*value == NULL) {
        return -1;
    }
    *exc = Py_NewRef(Py_None);
    return 1;
}

/* A wake list: a new list of (tid, value, exception-or-None). */
static int
dec_wakes(LogCore *self, PyObject **out)
{
    unsigned long long count;
    int r = dec_uint(self, &count);
    if (r <= 0) {
        return r;
    }
    PyObject *wakes = PyList_New(0);
    if (wakes == NULL) {
        return -1;
    }
    for (unsigned long long i = 0; i < count; i++) {
        unsigned long long tid;
        PyObject *value, *exc;
        if ((r = dec_uint(self, &tid)) <= 0 || (r = dec_outcome(self, &value, &exc)) <= 0) {
            Py_DECREF(wakes);
            return r;
        }
        PyObject *id = PyLong_FromUnsignedLongLong(tid);
        PyObject *wake = id ? PyTuple_Pack(3, id, value, exc) : NULL;
        Py_XDECREF(id);
        Py_DECREF(value);
        Py_DECREF(exc);
        if (wake == NULL || PyList_Append(wakes, wake) < 0) {
            Py_XDECREF(wake);
            Py_DECREF(wakes);
            return -1;
        }
        Py_DECREF(wake);
    }
    *out = wakes;
    return 1;
}

/* begin() on a record of `kind` only: 1, 0 (another kind, the end, a
 * damaged kind byte), -1. */
static int
dec_begin(LogCore *self, int kind)
{
    int got = core_fill(self, 1);
    if (got <= 0) {
        return got;
    }
    if (core_at(self)[0] != kind) {
        return 0;
    }
    self->record_start = self->base + self->pos;
    self->pos++;
    self->records++;
    return 1;
}

static PyObject *
logcore_clock(LogCore *self, PyObject *arg)
{
    READY(self);
    long kind = PyLong_AsLong(arg);
    if (kind == -1 && PyErr_Occurred()) {
        return NULL;
    }
    CoreMark m = core_mark(self);
    int cut, r = dec_begin(self, (int)kind);
    const unsigned char *p = r > 0 ? core_get(self, 8, &cut) : NULL;
    if (p == NULL) {
        return core_back(self, m);
    }
    double x = PyFloat_Unpack8((const char *)p, 1);
    return x == -1.0 && PyErr_Occurred() ? NULL : PyFloat_FromDouble(x);
}

static PyObject *
logcore_handler(LogCore *self, PyObject *const *args, Py_ssize_t nargs)
{
    READY(self);
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "handler(tid, index)");
        return NULL;
    }
    unsigned long long tid = PyLong_AsUnsignedLongLong(args[0]), index = PyLong_AsUnsignedLongLong(args[1]);
    if (PyErr_Occurred()) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    CoreMark m = core_mark(self);
    unsigned long long rtid, rindex;
    PyObject *wakes;
    int r = dec_begin(self, REC_HANDLER);
    if (r > 0 && (r = dec_uint(self, &rtid)) > 0 && (r = dec_uint(self, &rindex)) > 0) {
        r = rtid == tid && rindex == index ? dec_wakes(self, &wakes) : 0;
    }
    return r > 0 ? wakes : core_back(self, m);
}

static PyObject *
logcore_poll(LogCore *self, PyObject *unused)
{
    READY(self);
    CoreMark m = core_mark(self);
    unsigned long long flag;
    int r = dec_begin(self, REC_POLL);
    if (r > 0 && (r = dec_uint(self, &flag)) > 0) {
        if (flag == 0) {
            return Py_BuildValue("(iOO)", 0, Py_None, Py_None);
        }
        int cut;
        const unsigned char *p = core_get(self, 8, &cut);
        if (p == NULL) {
            return core_back(self, m);
        }
        double when = PyFloat_Unpack8((const char *)p, 1);
        PyObject *wakes;
        if ((r = dec_wakes(self, &wakes)) > 0) {
            PyObject *result = Py_BuildValue("(KdN)", flag, when, wakes);
            return result;
        }
    }
    return core_back(self, m);
}

/* A SOCK record of op on fd (any fd when fd < 0): 1 with *ok and *result. */
static int
dec_sock(LogCore *self, unsigned long long op, long long fd, int *ok, PyObject **result)
{
    unsigned long long rop, rfd, failed;
    int r = dec_begin(self, REC_SOCK);
    if (r <= 0 || (r = dec_uint(self, &rop)) <= 0 || (r = dec_uint(self, &rfd)) <= 0) {
        return r;
    }
    if (rop != op || (fd >= 0 && rfd != (unsigned long long)fd)) {
        return 0;
    }
    if ((r = dec_uint(self, &failed)) <= 0) {
        return r;
    }
    if (failed) {
        PyObject *value, *exc;
        if ((r = dec_outcome(self, &value, &exc)) <= 0) {
            return r;
        }
        Py_DECREF(value);
        if (!PyExceptionInstance_Check(exc)) {   /* recorded without its error: the Python says so */
            Py_DECREF(exc);
            return 0;
        }
        *ok = 0;
        *result = exc;
        return 1;
    }
    *ok = 1;
    switch (op) {
    case OP_CONNECT: case OP_BIND: case OP_LISTEN: case OP_SETSOCKOPT: case OP_SHUTDOWN:
        *result = Py_NewRef(Py_None);
        return 1;
    case OP_NEW: case OP_CONNECT_EX: case OP_SENDFILE: {
        unsigned long long n;
        if ((r = dec_uint(self, &n)) <= 0) {
            return r;
        }
        *result = PyLong_FromUnsignedLongLong(n);
        return *result == NULL ? -1 : 1;
    }
    case REC_RECV: case REC_RECV_INTO:
        return dec_blob(self, result);
    case REC_SEND: case OP_SENDTO: {
        unsigned long long count;
        int cut;
        PyObject *prefix;
        if ((r = dec_uint(self, &count)) <= 0) {
            return r;
        }
        const unsigned char *p = core_get(self, 4, &cut);
        if (p == NULL) {
            return cut ? 0 : -1;
        }
        unsigned long crc = (unsigned long)p[0] | ((unsigned long)p[1] << 8) | ((unsigned long)p[2] << 16) |
                            ((unsigned long)p[3] << 24);
        if ((r = dec_blob(self, &prefix)) <= 0) {
            return r;
        }
        *result = Py_BuildValue("(KkN)", count, crc, prefix);
        return *result == NULL ? -1 : 1;
    }
    default:   /* a value, an accepted peer, a datagram: the Python reads those */
        return 0;
    }
}

static int
sock_args(PyObject *const *args, unsigned long long *op, long long *fd)
{
    *op = PyLong_AsUnsignedLongLong(args[0]);
    *fd = PyLong_AsLongLong(args[1]);
    if (PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    return 1;
}

static PyObject *
logcore_sock_result(LogCore *self, PyObject *const *args, Py_ssize_t nargs)
{
    READY(self);
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "sock_result(op, fd)");
        return NULL;
    }
    unsigned long long op;
    long long fd;
    if (!sock_args(args, &op, &fd)) {
        Py_RETURN_NONE;
    }
    CoreMark m = core_mark(self);
    int ok;
    PyObject *result;
    int r = dec_sock(self, op, fd, &ok, &result);
    if (r <= 0) {
        return core_back(self, m);
    }
    return Py_BuildValue("(NN)", PyBool_FromLong(ok), result);
}

static PyObject *
logcore_check_sent(LogCore *self, PyObject *const *args, Py_ssize_t nargs)
{
    READY(self);
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "check_sent(op, fd, data)");
        return NULL;
    }
    unsigned long long op;
    long long fd;
    if (!sock_args(args, &op, &fd) || (op != REC_SEND && op != OP_SENDTO)) {
        Py_RETURN_NONE;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[2], &view, PyBUF_SIMPLE) < 0) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    CoreMark m = core_mark(self);
    int ok;
    PyObject *result = NULL;
    int r = dec_sock(self, op, fd, &ok, &result);
    if (r > 0 && ok) {
        unsigned long long count = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(result, 0));
        unsigned long crc = PyLong_AsUnsignedLong(PyTuple_GET_ITEM(result, 1));
        if (!PyErr_Occurred() && count <= (unsigned long long)view.len &&
                crc32_of(view.buf, (Py_ssize_t)count) == crc) {
            PyBuffer_Release(&view);
            Py_DECREF(result);
            return PyLong_FromUnsignedLongLong(count);
        }
    }
    PyBuffer_Release(&view);
    Py_XDECREF(result);
    return core_back(self, m);
}

static PyObject *
logcore_get_offset(LogCore *self, void *closure)
{
    return PyLong_FromSsize_t(self->base + self->pos);
}

static PyGetSetDef logcore_getset[] = {
    {"offset", (getter)logcore_get_offset, NULL, "The file offset of the next byte to read.", NULL},
    {NULL},
};

static PyMemberDef logcore_members[] = {
    {"record_start", T_PYSSIZET, offsetof(LogCore, record_start), 0, "The file offset of the record being read."},
    {"records", T_PYSSIZET, offsetof(LogCore, records), 0, "Records begun so far."},
    {"_file", T_OBJECT, offsetof(LogCore, file), READONLY, "The log file."},
    {NULL},
};

#define FAST(name, doc) {#name, (PyCFunction)(void (*)(void))logcore_##name, METH_FASTCALL, doc}
static PyMethodDef logcore_methods[] = {
    {"_fill", (PyCFunction)logcore_fill, METH_O, "_fill(need) -> bool: at least need bytes are buffered."},
    {"_take", (PyCFunction)(void (*)(void))logcore_take, METH_FASTCALL, "_take(n, what='a record') -> bytes."},
    {"at_end", (PyCFunction)logcore_at_end, METH_NOARGS, "Whether every byte of the file has been read."},
    {"peek", (PyCFunction)logcore_peek, METH_NOARGS, "The next byte, not consumed; -1 at the end."},
    {"kind", (PyCFunction)logcore_kind, METH_NOARGS, "The next record's kind, not consumed; 0 at the end."},
    {"begin", (PyCFunction)logcore_begin, METH_NOARGS, "Consume the next record's kind byte and return it."},
    {"uint", (PyCFunction)logcore_uint, METH_NOARGS, "An unsigned varint."},
    {"sint", (PyCFunction)logcore_sint, METH_NOARGS, "A zigzag-encoded signed varint."},
    {"u32", (PyCFunction)logcore_u32, METH_NOARGS, "A little-endian unsigned 32-bit integer."},
    {"f64", (PyCFunction)logcore_f64, METH_NOARGS, "A little-endian double."},
    {"blob", (PyCFunction)logcore_blob, METH_NOARGS, "A length-prefixed byte string."},
    {"text", (PyCFunction)logcore_text, METH_NOARGS, "A length-prefixed UTF-8 string."},
    {"clock", (PyCFunction)logcore_clock, METH_O, "clock(kind) -> float or None: a clock record of kind."},
    FAST(handler, "handler(tid, index) -> wakes or None: a HANDLER record of thread tid in call class index."),
    {"poll", (PyCFunction)logcore_poll, METH_NOARGS, "poll() -> (flag, time, wakes) or None: a POLL record."},
    FAST(sock_result, "sock_result(op, fd) -> (ok, result or exception) or None: a SOCK record of op on fd."),
    FAST(check_sent, "check_sent(op, fd, data) -> count or None: a SOCK record of a send that data matches."),
    {NULL},
};
#undef FAST

static PyTypeObject LogCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "threadlib._kernel._speedups.LogCore",
    .tp_basicsize = sizeof(LogCore),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "threadlib.replay.log._ReaderCore, compiled: the log reader's primitives and record decoders.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)logcore_init,
    .tp_dealloc = (destructor)logcore_dealloc,
    .tp_traverse = (traverseproc)logcore_traverse,
    .tp_clear = (inquiry)logcore_clear,
    .tp_methods = logcore_methods,
    .tp_members = logcore_members,
    .tp_getset = logcore_getset,
};

static PyObject *
log_configure(PyObject *module, PyObject *args)
{
    PyObject *error, *scope;
    if (!PyArg_ParseTuple(args, "OO:log_configure", &error, &scope)) {
        return NULL;
    }
    Py_XSETREF(log_error_class, Py_NewRef(error));
    Py_XSETREF(scope_raised_class, Py_NewRef(scope));
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"run_ready", run_ready, METH_O,
     "run_ready(scheduler) -> bool: Scheduler._run_ready, compiled (see scheduler.py)."},
    {"sock_recv", (PyCFunction)(void (*)(void))sock_recv, METH_FASTCALL,
     "sock_recv(sock, bufsize) -> bytes: socket.socket.recv(bufsize) on a non-blocking socket."},
    {"sock_recv_into", (PyCFunction)(void (*)(void))sock_recv_into, METH_FASTCALL,
     "sock_recv_into(sock, buffer, nbytes) -> int: socket.socket.recv_into on a non-blocking socket."},
    {"sock_send", (PyCFunction)(void (*)(void))sock_send, METH_FASTCALL,
     "sock_send(sock, data) -> int: socket.socket.send(data) on a non-blocking socket."},
    {"rec_recv", (PyCFunction)(void (*)(void))rec_recv, METH_FASTCALL,
     "rec_recv(log, sock, bufsize) -> bytes: sock_recv, its record appended to the bytearray log."},
    {"rec_recv_into", (PyCFunction)(void (*)(void))rec_recv_into, METH_FASTCALL,
     "rec_recv_into(log, sock, buffer, nbytes) -> int: sock_recv_into, its record appended to log."},
    {"rec_send", (PyCFunction)(void (*)(void))rec_send, METH_FASTCALL,
     "rec_send(log, sock, data) -> int: sock_send, its record appended to log."},
    {"rec_handler", (PyCFunction)(void (*)(void))rec_handler, METH_FASTCALL,
     "rec_handler(log, ready, start, tid, index) -> bool: a HANDLER record, if its wakes are simple."},
    {"rec_poll", (PyCFunction)(void (*)(void))rec_poll, METH_FASTCALL,
     "rec_poll(log, ready, start, now) -> bool: a POLL record, if its wakes are simple."},
    {"log_clear", log_clear, METH_O, "log_clear(log): empty the log's bytearray, keeping its allocation."},
    {"log_append", (PyCFunction)(void (*)(void))log_append, METH_FASTCALL,
     "log_append(log, data): append bytes to the log's bytearray as the compiled recorders do."},
    {"log_configure", log_configure, METH_VARARGS,
     "log_configure(LogError, ScopeRaised): the classes LogCore raises and returns (threadlib.replay.log)."},
    {"configure_scheduler", configure_scheduler, METH_O,
     "configure_scheduler(Scheduler): the class whose `current` slot run_ready writes directly."},
    {"configure_awaitables", configure_awaitables, METH_VARARGS,
     "configure_awaitables(*tuple_classes): await them through tuple's own iterator, as their __await__ says."},
    {"configure_waits", configure_waits, METH_VARARGS,
     "configure_waits(Park, WaitQueue, Scheduler._sys_park, WaitRead, IOWorker._wait_read): what run_ready "
     "needs to serve a Park and a WaitRead itself."},
    {"configure_stream", configure_stream, METH_VARARGS,
     "configure_stream(Stream, sockio_globals): Stream.recv and Stream.sendall become the compiled methods "
     "(their Python functions stay as Stream._recv_spec and _sendall_spec, the specifications)."},
    {"poll", poll_step, METH_O,
     "poll(scheduler): Scheduler._poll, compiled for the EpollPoller (see scheduler.py)."},
    {"configure_poll", configure_poll, METH_VARARGS,
     "configure_poll(Scheduler._poll, EpollPoller, TimerWorker): what poll needs, and what it leaves to _poll."},
    {"configure", configure, METH_VARARGS,
     "configure(YIELD, _PendingInterrupt, mark_retrieved, Thread): the objects run_ready needs."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "threadlib._kernel._speedups",
    "The scheduler's run loop, compiled (optional; scheduler.py is the specification).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
#define INTERN(var, text) if ((var = PyUnicode_InternFromString(text)) == NULL) return NULL
    INTERN(s_ready, "_ready");
    INTERN(s_handlers, "_handlers");
    INTERN(s_pending, "_pending");
    INTERN(s_base, "_base");
    INTERN(s_twin, "_twin");
    INTERN(s_current, "current");
    INTERN(s_finish, "_finish");
    INTERN(s_rebase, "_rebase");
    INTERN(s_unknown_call, "_unknown_call");
    INTERN(s_interrupted_wait, "_interrupted_wait");
    INTERN(s_worker_failed, "_worker_failed");
    INTERN(s_popleft, "popleft");
    INTERN(s_append, "append");
    INTERN(s_throw, "throw");
    INTERN(s_exc, "exc");
    INTERN(s_value, "value");
    INTERN(s_coro_slot, "_coro");
    INTERN(s_value_slot, "_value");
    INTERN(s_exc_slot, "_exc");
    INTERN(s_fileno, "fileno");
    INTERN(s_fds, "_fds");
    INTERN(s_waiting, "waiting");
    INTERN(s_resume, "resume");
    INTERN(s_modify_fd, "modify_fd");
    INTERN(s__ready, "_ready");
    INTERN(s_append_name, "append");
    INTERN(s_quiet, "quiet");
    INTERN(s_flush, "flush");
    INTERN(s_threadlib_replayed, "threadlib_replayed");
    INTERN(s_clock, "clock");
    INTERN(s__recv, "_recv");
    INTERN(s__send, "_send");
    INTERN(s__send_rest, "_send_rest");
    INTERN(s_timeout, "timeout");
    INTERN(s__drained, "_drained");
    INTERN(s__hung_up, "_hung_up");
    INTERN(s__sock, "_sock");
    INTERN(s__wait_read, "_wait_read");
    INTERN(s__poller, "_poller");
    INTERN(s__timed, "_timed");
    INTERN(s_virtual, "virtual");
    INTERN(s_now, "now");
    INTERN(s_next_deadline, "next_deadline");
    INTERN(s_expire, "expire");
    INTERN(s__heap, "_heap");
    INTERN(s_advance_to, "advance_to");
    INTERN(s__any_worker_busy, "_any_worker_busy");
    INTERN(s__deadlock, "_deadlock");
#undef INTERN
    PyObject *socket_module = PyImport_ImportModule("socket");
    if (socket_module == NULL) {
        return NULL;
    }
    socket_type = PyObject_GetAttrString(socket_module, "socket");
    Py_DECREF(socket_module);
    if (socket_type == NULL) {
        return NULL;
    }
    crc_init();
    if (PyType_Ready(&FdWaitersType) < 0 || PyType_Ready(&RecordedHandlerType) < 0 ||
        PyType_Ready(&RecordedPollType) < 0 || PyType_Ready(&LogCoreType) < 0 || PyType_Ready(&RecvCallType) < 0) {
        return NULL;
    }
    PyObject *module = PyModule_Create(&module_def);
    if (module == NULL) {
        return NULL;
    }
    if (PyModule_AddObjectRef(module, "FdWaiters", (PyObject *)&FdWaitersType) < 0 ||
        PyModule_AddObjectRef(module, "RecordedHandler", (PyObject *)&RecordedHandlerType) < 0 ||
        PyModule_AddObjectRef(module, "RecordedPoll", (PyObject *)&RecordedPollType) < 0 ||
        PyModule_AddObjectRef(module, "LogCore", (PyObject *)&LogCoreType) < 0 ||
        PyModule_AddObjectRef(module, "RecvCall", (PyObject *)&RecvCallType) < 0 || green_add_to_module(module) < 0 ||
        loop_add_to_module(module) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
