/* threadlib._kernel._uring: one io_uring instance as a small Python object.
 *
 * What it is for: the io_uring worker (uring.py) needs the kernel's
 * submission and completion rings, and no io_uring binding for Python is
 * mature. This file speaks the kernel's documented ABI (linux/io_uring.h)
 * directly: io_uring_setup, io_uring_enter and io_uring_register through
 * syscall(2), the rings mapped with mmap. No liburing.
 *
 * A Ring prepares submission entries (poll_add, poll_remove, cancel, read,
 * write, fsync, recv, recv_multishot, send, accept, nop) in the shared submission ring without a system call; poll()
 * hands every prepared entry to the kernel in one io_uring_enter, waits
 * (with the GIL released) only when asked to and when no completion is
 * already there, and returns the completions as (user_data, res, flags)
 * tuples; dispatch() does the same but calls each completion's handler
 * (found by user_data in a dict) instead. When completions are waiting and nothing is to be submitted it
 * makes no system call at all.
 *
 * register_buffer() registers a buffer (an arena of fileio's pool) in the
 * ring's table of fixed buffers: a read or write of any buffer inside one
 * goes in as READ_FIXED/WRITE_FIXED (pages pinned once, not per request).
 *
 * provide_buffers() registers a ring of provided buffers (group 0) that
 * multishot receives (recv_multishot) pick from: the kernel posts one
 * completion per arrival while the request stays armed. reap() copies the
 * bytes out of the picked buffer into the completion's tuple (in res's
 * place) and gives the buffer back to the kernel at once, so the buffers
 * are only ever lent between a completion's posting and its reaping.
 *
 * What it must never do: decide what to watch or whom to wake (uring.py
 * does), let go of a buffer while the kernel may still read or write it
 * (read/write hold the buffer's export until their completion is reaped,
 * and close() reaps everything in flight before unmapping), or block with
 * the GIL held.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>
#include <linux/io_uring.h>
#include <linux/time_types.h>

#ifndef IORING_SETUP_SUBMIT_ALL
#define IORING_SETUP_SUBMIT_ALL (1U << 7)
#endif
#ifndef IORING_SETUP_COOP_TASKRUN
#define IORING_SETUP_COOP_TASKRUN (1U << 8)
#endif
#ifndef IORING_SETUP_TASKRUN_FLAG
#define IORING_SETUP_TASKRUN_FLAG (1U << 9)
#endif
#ifndef IORING_ACCEPT_MULTISHOT
#define IORING_ACCEPT_MULTISHOT (1U << 0)
#endif
#ifndef IORING_ASYNC_CANCEL_ALL
#define IORING_ASYNC_CANCEL_ALL (1U << 0)
#endif
#ifndef IORING_ASYNC_CANCEL_FD
#define IORING_ASYNC_CANCEL_FD (1U << 1)
#endif
#ifndef IORING_SQ_TASKRUN
#define IORING_SQ_TASKRUN (1U << 2)
#endif
#ifndef IORING_RECV_MULTISHOT
#define IORING_RECV_MULTISHOT (1U << 1)
#endif

#define BUFFER_GROUP 0  /* the one provided-buffer group of a Ring */
#define FIXED_SLOTS 64  /* registered (fixed) buffers a Ring takes */

static int
sys_setup(unsigned entries, struct io_uring_params *p)
{
    return (int)syscall(__NR_io_uring_setup, entries, p);
}

static int
sys_enter(int fd, unsigned to_submit, unsigned min_complete, unsigned flags, void *arg, size_t argsz)
{
    return (int)syscall(__NR_io_uring_enter, fd, to_submit, min_complete, flags, arg, argsz);
}

static int
sys_register(int fd, unsigned opcode, void *arg, unsigned nr)
{
    return (int)syscall(__NR_io_uring_register, fd, opcode, arg, nr);
}

typedef struct {
    PyObject_HEAD
    int fd;
    unsigned features, setup_flags, sq_entries, cq_entries;
    /* submission ring */
    void *sq_map; size_t sq_map_size;
    unsigned *sq_head, *sq_tail, *sq_mask, *sq_flags, *sq_array;
    struct io_uring_sqe *sqes; size_t sqes_size;
    unsigned sq_local_tail;   /* entries prepared; published to *sq_tail at once */
    /* completion ring */
    void *cq_map; size_t cq_map_size;
    unsigned *cq_head, *cq_tail, *cq_mask;
    struct io_uring_cqe *cqes;
    /* user_data -> memoryview of the buffer the kernel may still touch */
    PyObject *held;
    /* provided buffers (provide_buffers): their ring, shared with the kernel,
     * and the memory of the buffers themselves */
    struct io_uring_buf_ring *br; size_t br_size;
    char *br_data; size_t br_data_size;
    unsigned br_entries, br_buf_size;
    unsigned short br_tail;   /* buffers given to the kernel, published to br->tail */
    /* registered buffers (register_buffer): a sparse table of FIXED_SLOTS,
     * made at the first registration (-1: the kernel refused it); each
     * slot's export is held until the ring is closed */
    int fixed_table;
    unsigned fixed_count;
    Py_buffer fixed[FIXED_SLOTS];
} Ring;

/* Drop the provided buffers: unregistered first (under the ring's lock,
 * so no receive is copying into one), then unmapped. */
static void
buffers_unmap(Ring *r)
{
    if (r->br == NULL)
        return;
    if (r->fd >= 0) {
        struct io_uring_buf_reg reg;
        memset(&reg, 0, sizeof reg);
        reg.bgid = BUFFER_GROUP;
        sys_register(r->fd, IORING_UNREGISTER_PBUF_RING, &reg, 1);
    }
    munmap(r->br, r->br_size);
    munmap(r->br_data, r->br_data_size);
    r->br = NULL;
    r->br_data = NULL;
}

/* Let go of the registered buffers' exports: only once the ring's fd is
 * closed (the kernel may read or write them until then). */
static void
release_fixed(Ring *r)
{
    for (unsigned i = 0; i < r->fixed_count; i++)
        PyBuffer_Release(&r->fixed[i]);
    r->fixed_count = 0;
}

static void
ring_unmap(Ring *r)
{
    buffers_unmap(r);
    if (r->sqes != NULL && r->sqes != MAP_FAILED)
        munmap(r->sqes, r->sqes_size);
    if (r->cq_map != NULL && r->cq_map != MAP_FAILED && r->cq_map != r->sq_map)
        munmap(r->cq_map, r->cq_map_size);
    if (r->sq_map != NULL && r->sq_map != MAP_FAILED)
        munmap(r->sq_map, r->sq_map_size);
    r->sqes = NULL; r->cq_map = NULL; r->sq_map = NULL;
    if (r->fd >= 0) {
        close(r->fd);
        r->fd = -1;
    }
    release_fixed(r);
}

static PyObject *
errno_error(int err, const char *what)
{
    /* io_uring_enter's only EEXIST: a ring made single-issuer entered from
     * another OS thread than the one that made it. */
    const char *why = err == EEXIST && strncmp(what, "io_uring_enter", 14) == 0
        ? "this io_uring ring belongs to the OS thread that made it (IORING_SETUP_SINGLE_ISSUER): "
          "run the scheduler in the thread that made its io_uring worker"
        : strerror(err);
    PyObject *msg = PyUnicode_FromFormat("%s: %s", what, why);
    if (msg == NULL)
        return NULL;
    PyObject *args = Py_BuildValue("(iO)", err, msg);
    Py_DECREF(msg);
    if (args == NULL)
        return NULL;
    PyErr_SetObject(PyExc_OSError, args);
    Py_DECREF(args);
    return NULL;
}

static int
ring_init(Ring *r, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"entries", NULL};
    unsigned entries = 256;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|I", kwlist, &entries))
        return -1;
    if (entries < 1 || entries > 32768) {
        PyErr_Format(PyExc_ValueError, "entries must be in 1..32768, got %u", entries);
        return -1;
    }
    if (r->fd >= 0) {
        PyErr_SetString(PyExc_RuntimeError, "Ring is already set up");
        return -1;
    }
    /* The richest setup first; older kernels refuse flags they do not know
     * with EINVAL, so each retry drops the newest ones. DEFER_TASKRUN runs
     * the kernel's completion work only when the ring is entered (with
     * GETEVENTS, as every enter here is), not as it arrives: a seventh less
     * kernel time per received message on a busy socket; it needs
     * SINGLE_ISSUER (only the OS thread that made the ring enters it). */
    static const unsigned tries[] = {
        IORING_SETUP_CQSIZE | IORING_SETUP_SUBMIT_ALL | IORING_SETUP_TASKRUN_FLAG | IORING_SETUP_SINGLE_ISSUER |
            IORING_SETUP_DEFER_TASKRUN,
        IORING_SETUP_CQSIZE | IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG,
        IORING_SETUP_CQSIZE | IORING_SETUP_SUBMIT_ALL,
        IORING_SETUP_CQSIZE,
        0,
    };
    struct io_uring_params p;
    int fd = -1, err = 0;
    for (size_t i = 0; i < sizeof tries / sizeof tries[0]; i++) {
        memset(&p, 0, sizeof p);
        p.flags = tries[i];
        p.cq_entries = entries * 4;  /* multishot polls may post many per pass */
        fd = sys_setup(entries, &p);
        if (fd >= 0)
            break;
        err = errno;
        if (err != EINVAL)
            break;
    }
    if (fd < 0) {
        errno_error(err, "io_uring_setup");
        return -1;
    }
    r->fd = fd;
    r->features = p.features;
    r->setup_flags = p.flags;
    r->sq_entries = p.sq_entries;
    r->cq_entries = p.cq_entries;
    r->sq_map_size = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    r->cq_map_size = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    if (p.features & IORING_FEAT_SINGLE_MMAP) {
        if (r->cq_map_size > r->sq_map_size)
            r->sq_map_size = r->cq_map_size;
        r->cq_map_size = r->sq_map_size;
    }
    r->sq_map = mmap(NULL, r->sq_map_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd,
                     IORING_OFF_SQ_RING);
    if (r->sq_map == MAP_FAILED) {
        err = errno;
        ring_unmap(r);
        errno_error(err, "mmap of the io_uring submission ring");
        return -1;
    }
    if (p.features & IORING_FEAT_SINGLE_MMAP) {
        r->cq_map = r->sq_map;
    } else {
        r->cq_map = mmap(NULL, r->cq_map_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd,
                         IORING_OFF_CQ_RING);
        if (r->cq_map == MAP_FAILED) {
            err = errno;
            ring_unmap(r);
            errno_error(err, "mmap of the io_uring completion ring");
            return -1;
        }
    }
    r->sqes_size = p.sq_entries * sizeof(struct io_uring_sqe);
    r->sqes = mmap(NULL, r->sqes_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd,
                   IORING_OFF_SQES);
    if (r->sqes == MAP_FAILED) {
        err = errno;
        ring_unmap(r);
        errno_error(err, "mmap of the io_uring submission entries");
        return -1;
    }
    char *sq = r->sq_map, *cq = r->cq_map;
    r->sq_head = (unsigned *)(sq + p.sq_off.head);
    r->sq_tail = (unsigned *)(sq + p.sq_off.tail);
    r->sq_mask = (unsigned *)(sq + p.sq_off.ring_mask);
    r->sq_flags = (unsigned *)(sq + p.sq_off.flags);
    r->sq_array = (unsigned *)(sq + p.sq_off.array);
    r->cq_head = (unsigned *)(cq + p.cq_off.head);
    r->cq_tail = (unsigned *)(cq + p.cq_off.tail);
    r->cq_mask = (unsigned *)(cq + p.cq_off.ring_mask);
    r->cqes = (struct io_uring_cqe *)(cq + p.cq_off.cqes);
    /* Entry i of the ring always names submission entry i. */
    for (unsigned i = 0; i < p.sq_entries; i++)
        r->sq_array[i] = i;
    r->sq_local_tail = *r->sq_tail;
    r->held = PyDict_New();
    if (r->held == NULL) {
        ring_unmap(r);
        return -1;
    }
    return 0;
}

static PyObject *
ring_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    Ring *r = (Ring *)type->tp_alloc(type, 0);
    if (r != NULL)
        r->fd = -1;
    return (PyObject *)r;
}

static int
check_open(Ring *r)
{
    if (r->fd < 0) {
        PyErr_SetString(PyExc_ValueError, "the io_uring Ring is closed");
        return -1;
    }
    return 0;
}

static unsigned
unsubmitted(Ring *r)
{
    return r->sq_local_tail - __atomic_load_n(r->sq_head, __ATOMIC_ACQUIRE);
}

static int
enter(Ring *r, unsigned to_submit, unsigned min_complete, double timeout)
{
    /* Returns the kernel's result, or -errno. Releases the GIL only when it
     * may wait. */
    unsigned flags = 0;
    struct io_uring_getevents_arg arg;
    struct __kernel_timespec ts;
    void *argp = NULL;
    size_t argsz = 0;
    int ret;
    if (min_complete) {
        flags |= IORING_ENTER_GETEVENTS;
        if (timeout >= 0) {
            memset(&arg, 0, sizeof arg);
            ts.tv_sec = (long long)timeout;
            ts.tv_nsec = (long long)((timeout - (double)ts.tv_sec) * 1e9);
            arg.ts = (unsigned long long)(uintptr_t)&ts;
            flags |= IORING_ENTER_EXT_ARG;
            argp = &arg;
            argsz = sizeof arg;
        }
        Py_BEGIN_ALLOW_THREADS
        ret = sys_enter(r->fd, to_submit, min_complete, flags, argp, argsz);
        Py_END_ALLOW_THREADS
    } else {
        unsigned sqf = __atomic_load_n(r->sq_flags, __ATOMIC_RELAXED);
        if (sqf & (IORING_SQ_CQ_OVERFLOW | IORING_SQ_TASKRUN) || r->setup_flags & IORING_SETUP_DEFER_TASKRUN)
            flags |= IORING_ENTER_GETEVENTS;  /* flush overflowed or deferred completions, run deferred work */
        ret = sys_enter(r->fd, to_submit, 0, flags, NULL, 0);
    }
    return ret < 0 ? -errno : ret;
}

/* A free submission entry, zeroed, with its opcode, fd and user_data set;
 * submits what is prepared if the ring is full. NULL with an exception set
 * when even that fails. */
static struct io_uring_sqe *
get_sqe(Ring *r, int opcode, int fd, unsigned long long user_data)
{
    if (check_open(r) < 0)
        return NULL;
    if (unsubmitted(r) >= r->sq_entries) {
        int ret = enter(r, unsubmitted(r), 0, 0.0);
        if (ret < 0 && ret != -EBUSY && ret != -EAGAIN && ret != -EINTR) {
            errno_error(-ret, "io_uring_enter (submission ring full)");
            return NULL;
        }
        if (unsubmitted(r) >= r->sq_entries) {
            PyErr_SetString(PyExc_BlockingIOError, "the io_uring submission ring is full");
            return NULL;
        }
    }
    struct io_uring_sqe *sqe = &r->sqes[r->sq_local_tail & *r->sq_mask];
    memset(sqe, 0, sizeof *sqe);
    sqe->opcode = (unsigned char)opcode;
    sqe->fd = fd;
    sqe->user_data = user_data;
    return sqe;
}

static void
publish(Ring *r)
{
    r->sq_local_tail++;
    __atomic_store_n(r->sq_tail, r->sq_local_tail, __ATOMIC_RELEASE);
}

static int
check_fd(int fd)
{
    if (fd < 0) {
        PyErr_Format(PyExc_ValueError, "fd must be a non-negative int, got %d", fd);
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(poll_add_doc,
"poll_add(fd, events, user_data, multishot)\n\n"
"Prepare a poll for ``events`` (epoll bits) on ``fd``. Multishot polls are\n"
"edge-triggered and post a completion per readiness change with\n"
"IORING_CQE_F_MORE set while they stay armed; a one-shot poll posts once.");

static PyObject *
ring_poll_add(Ring *r, PyObject *args)
{
    int fd, multishot;
    unsigned events;
    unsigned long long ud;
    if (!PyArg_ParseTuple(args, "iIKp:poll_add", &fd, &events, &ud, &multishot))
        return NULL;
    if (check_fd(fd) < 0)
        return NULL;
    struct io_uring_sqe *sqe = get_sqe(r, IORING_OP_POLL_ADD, fd, ud);
    if (sqe == NULL)
        return NULL;
    sqe->poll32_events = events;
    sqe->len = multishot ? IORING_POLL_ADD_MULTI : 0;
    publish(r);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(poll_remove_doc,
"poll_remove(target, user_data)\n\n"
"Prepare the removal of the poll whose user_data is ``target``; the poll\n"
"then completes with -ECANCELED, the removal itself with ``user_data``.");

static PyObject *
ring_poll_remove(Ring *r, PyObject *args)
{
    unsigned long long target, ud;
    if (!PyArg_ParseTuple(args, "KK:poll_remove", &target, &ud))
        return NULL;
    struct io_uring_sqe *sqe = get_sqe(r, IORING_OP_POLL_REMOVE, -1, ud);
    if (sqe == NULL)
        return NULL;
    sqe->addr = target;
    publish(r);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(cancel_doc,
"cancel(target, user_data, flags=0)\n\n"
"Prepare an IORING_OP_ASYNC_CANCEL of the request whose user_data is\n"
"``target`` (``flags``: IORING_ASYNC_CANCEL_* bits; with ASYNC_CANCEL_FD,\n"
"``target`` is an fd). The request then completes with -ECANCELED (or its\n"
"result, when it was already done), the cancel itself with ``user_data``:\n"
"0 (done), -ENOENT (not found) or -EALREADY (running: retry).\n"
"Unlike poll_remove, a cancel of a poll whose wake-up is being handled\n"
"is not refused: the poll is marked and ends.");

static PyObject *
ring_cancel(Ring *r, PyObject *args)
{
    unsigned long long target, ud;
    unsigned flags = 0;
    if (!PyArg_ParseTuple(args, "KK|I:cancel", &target, &ud, &flags))
        return NULL;
#ifdef IORING_ASYNC_CANCEL_FD
    int by_fd = (flags & IORING_ASYNC_CANCEL_FD) != 0;
#else
    int by_fd = 0;
#endif
    if (by_fd && target > 0x7fffffffULL) {
        PyErr_Format(PyExc_ValueError, "the fd to cancel on must be an int fd, got %llu", target);
        return NULL;
    }
    struct io_uring_sqe *sqe = get_sqe(r, IORING_OP_ASYNC_CANCEL, by_fd ? (int)target : -1, ud);
    if (sqe == NULL)
        return NULL;
    if (!by_fd)
        sqe->addr = target;
    sqe->cancel_flags = flags;
    publish(r);
    Py_RETURN_NONE;
}

static PyObject *prep_buffer(Ring *r, int opcode, int fd, PyObject *buf, long long offset, unsigned long long ud);

static PyObject *
prep_rw(Ring *r, PyObject *args, int opcode, const char *fmt)
{
    int fd;
    PyObject *buf;
    long long offset;
    unsigned long long ud;
    if (!PyArg_ParseTuple(args, fmt, &fd, &buf, &offset, &ud))
        return NULL;
    return prep_buffer(r, opcode, fd, buf, offset, ud);
}

/* A request on ``buf`` (read into it, or write, recv, send from it), its
 * memoryview held until the completion is reaped. */
static PyObject *
prep_buffer(Ring *r, int opcode, int fd, PyObject *buf, long long offset, unsigned long long ud)
{
    if (check_fd(fd) < 0)
        return NULL;
    if (offset < -1) {
        PyErr_Format(PyExc_ValueError, "offset must be >= 0 (or -1: the file position), got %lld", offset);
        return NULL;
    }
    if (check_open(r) < 0)
        return NULL;
    PyObject *key = PyLong_FromUnsignedLongLong(ud);
    if (key == NULL)
        return NULL;
    int known = PyDict_Contains(r->held, key);
    if (known != 0) {
        if (known > 0)
            PyErr_Format(PyExc_ValueError, "user_data %llu already has a request in flight", ud);
        Py_DECREF(key);
        return NULL;
    }
    /* The memoryview holds the buffer's export (a bytearray cannot be
     * resized under it) until the completion is reaped. */
    PyObject *view = PyMemoryView_FromObject(buf);
    if (view == NULL) {
        Py_DECREF(key);
        return NULL;
    }
    Py_buffer *b = PyMemoryView_GET_BUFFER(view);
    if ((opcode == IORING_OP_READ || opcode == IORING_OP_RECV) && b->readonly) {
        PyErr_SetString(PyExc_TypeError, "read needs a writable buffer (bytearray, mmap, writable memoryview)");
        goto fail;
    }
    if (!PyBuffer_IsContiguous(b, 'C')) {
        PyErr_SetString(PyExc_ValueError, "the buffer must be C-contiguous");
        goto fail;
    }
    if (b->len > 0x7fffffff) {
        PyErr_SetString(PyExc_ValueError, "the buffer is larger than 2 GiB");
        goto fail;
    }
    struct io_uring_sqe *sqe = get_sqe(r, opcode, fd, ud);
    if (sqe == NULL)
        goto fail;
    if (PyDict_SetItem(r->held, key, view) < 0)
        goto fail;
    sqe->addr = (unsigned long long)(uintptr_t)b->buf;
    sqe->len = (unsigned)b->len;
    if (opcode == IORING_OP_READ || opcode == IORING_OP_WRITE) {
        /* Inside a registered buffer: the fixed kind, which spares the
         * kernel pinning the pages for each request. */
        for (unsigned i = 0; i < r->fixed_count; i++) {
            char *base = r->fixed[i].buf;
            if ((char *)b->buf >= base && (char *)b->buf + b->len <= base + r->fixed[i].len) {
                sqe->opcode = opcode == IORING_OP_READ ? IORING_OP_READ_FIXED : IORING_OP_WRITE_FIXED;
                sqe->buf_index = (unsigned short)i;
                break;
            }
        }
    }
    if (opcode == IORING_OP_RECV || opcode == IORING_OP_SEND) {
        /* For sockets ``offset`` is unused: addr2 (its union) must stay 0,
         * or a send would take it as a destination address. */
        sqe->msg_flags = opcode == IORING_OP_SEND ? MSG_NOSIGNAL : 0;
    } else {
        sqe->off = (unsigned long long)offset;
    }
    publish(r);
    Py_DECREF(view);
    Py_DECREF(key);
    Py_RETURN_NONE;
fail:
    Py_DECREF(view);
    Py_DECREF(key);
    return NULL;
}

PyDoc_STRVAR(read_doc,
"read(fd, buffer, offset, user_data)\n\n"
"Prepare a read of len(buffer) bytes at ``offset`` (-1: the file position)\n"
"into the writable ``buffer``, which is held until the completion is reaped.");

static PyObject *
ring_read(Ring *r, PyObject *args)
{
    return prep_rw(r, args, IORING_OP_READ, "iOLK:read");
}

PyDoc_STRVAR(write_doc,
"write(fd, buffer, offset, user_data)\n\n"
"Prepare a write of ``buffer`` at ``offset`` (-1: the file position); the\n"
"buffer is held until the completion is reaped.");

static PyObject *
ring_write(Ring *r, PyObject *args)
{
    return prep_rw(r, args, IORING_OP_WRITE, "iOLK:write");
}

PyDoc_STRVAR(recv_doc,
"recv(fd, buffer, user_data)\n\n"
"Prepare a recv(2) of up to len(buffer) bytes from the socket ``fd`` into\n"
"the writable ``buffer`` (held until the completion is reaped): the kernel\n"
"waits for data itself; the completion's res is the byte count, 0 at end\n"
"of stream, or -errno.");

static PyObject *
ring_recv(Ring *r, PyObject *args)
{
    int fd;
    PyObject *buf;
    unsigned long long ud;
    if (!PyArg_ParseTuple(args, "iOK:recv", &fd, &buf, &ud))
        return NULL;
    return prep_buffer(r, IORING_OP_RECV, fd, buf, 0, ud);
}

PyDoc_STRVAR(recv_multishot_doc,
"recv_multishot(fd, user_data)\n\n"
"Prepare a multishot receive on the socket ``fd`` into the provided buffers\n"
"(provide_buffers() first): a completion per arrival, with IORING_CQE_F_MORE\n"
"while the request stays armed, whose res is the bytes received (copied\n"
"out; the buffer goes back to the kernel at once). An int res ends it: 0 at\n"
"end of stream, -ENOBUFS when every buffer was lent at once, or -errno.");

static PyObject *
ring_recv_multishot(Ring *r, PyObject *args)
{
    int fd;
    unsigned long long ud;
    if (!PyArg_ParseTuple(args, "iK:recv_multishot", &fd, &ud))
        return NULL;
    if (check_fd(fd) < 0)
        return NULL;
    if (r->br == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "recv_multishot needs provide_buffers() first");
        return NULL;
    }
    struct io_uring_sqe *sqe = get_sqe(r, IORING_OP_RECV, fd, ud);
    if (sqe == NULL)
        return NULL;
    sqe->ioprio = IORING_RECV_MULTISHOT;
    sqe->flags = IOSQE_BUFFER_SELECT;
    sqe->buf_group = BUFFER_GROUP;
    publish(r);
    Py_RETURN_NONE;
}

/* Give buffer `bid` (back) to the kernel; published by publish_buffers. */
static void
lend_buffer(Ring *r, unsigned short bid)
{
    struct io_uring_buf *b = &r->br->bufs[r->br_tail & (r->br_entries - 1)];
    b->addr = (unsigned long long)(uintptr_t)(r->br_data + (size_t)bid * r->br_buf_size);
    b->len = r->br_buf_size;
    b->bid = bid;
    r->br_tail++;
}

static void
publish_buffers(Ring *r)
{
    __atomic_store_n(&r->br->tail, r->br_tail, __ATOMIC_RELEASE);
}

PyDoc_STRVAR(provide_buffers_doc,
"provide_buffers(count, size)\n\n"
"Register ``count`` (a power of two, at most 32768) buffers of ``size``\n"
"bytes as the ring's provided-buffer group (IORING_REGISTER_PBUF_RING), for\n"
"recv_multishot. Once per Ring. OSError when the kernel lacks it.");

static PyObject *
ring_provide_buffers(Ring *r, PyObject *args)
{
    unsigned count, size;
    if (!PyArg_ParseTuple(args, "II:provide_buffers", &count, &size))
        return NULL;
    if (check_open(r) < 0)
        return NULL;
    if (count == 0 || count > 32768 || (count & (count - 1)) != 0) {
        PyErr_Format(PyExc_ValueError, "count must be a power of two in 1..32768, got %u", count);
        return NULL;
    }
    if (size == 0 || size > (1U << 20)) {
        PyErr_Format(PyExc_ValueError, "size must be in 1..1048576 bytes, got %u", size);
        return NULL;
    }
    if (r->br != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "this Ring already has its provided buffers");
        return NULL;
    }
    size_t ring_size = (size_t)count * sizeof(struct io_uring_buf);
    size_t data_size = (size_t)count * size;
    void *ring = mmap(NULL, ring_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (ring == MAP_FAILED)
        return errno_error(errno, "mmap of the provided-buffer ring");
    void *data = mmap(NULL, data_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (data == MAP_FAILED) {
        int err = errno;
        munmap(ring, ring_size);
        return errno_error(err, "mmap of the provided buffers");
    }
    struct io_uring_buf_reg reg;
    memset(&reg, 0, sizeof reg);
    reg.ring_addr = (unsigned long long)(uintptr_t)ring;
    reg.ring_entries = count;
    reg.bgid = BUFFER_GROUP;
    if (sys_register(r->fd, IORING_REGISTER_PBUF_RING, &reg, 1) < 0) {
        int err = errno;
        munmap(ring, ring_size);
        munmap(data, data_size);
        return errno_error(err, "io_uring_register(PBUF_RING)");
    }
    r->br = ring;
    r->br_size = ring_size;
    r->br_data = data;
    r->br_data_size = data_size;
    r->br_entries = count;
    r->br_buf_size = size;
    r->br_tail = 0;
    for (unsigned i = 0; i < count; i++)
        lend_buffer(r, (unsigned short)i);
    publish_buffers(r);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(register_buffer_doc,
"register_buffer(buffer) -> bool\n\n"
"Register the writable ``buffer`` (an mmap arena, say) with the kernel\n"
"(IORING_REGISTER_BUFFERS2/UPDATE; its pages are pinned once): read and\n"
"write of any buffer inside it are then IORING_OP_READ_FIXED/WRITE_FIXED.\n"
"The ring holds it until closed. False when the table is full or the\n"
"kernel refuses (too old, or the memlock limit).");

static PyObject *
ring_register_buffer(Ring *r, PyObject *obj)
{
    if (check_open(r) < 0)
        return NULL;
    if (r->fixed_table < 0 || r->fixed_count >= FIXED_SLOTS)
        Py_RETURN_FALSE;
    if (r->fixed_table == 0) {
        struct io_uring_rsrc_register reg;
        memset(&reg, 0, sizeof reg);
        reg.nr = FIXED_SLOTS;
        reg.flags = IORING_RSRC_REGISTER_SPARSE;
        if (sys_register(r->fd, IORING_REGISTER_BUFFERS2, &reg, sizeof reg) < 0) {
            r->fixed_table = -1;
            Py_RETURN_FALSE;
        }
        r->fixed_table = 1;
    }
    Py_buffer *b = &r->fixed[r->fixed_count];
    if (PyObject_GetBuffer(obj, b, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    struct iovec iov = {.iov_base = b->buf, .iov_len = (size_t)b->len};
    struct io_uring_rsrc_update2 up;
    memset(&up, 0, sizeof up);
    up.offset = r->fixed_count;
    up.data = (unsigned long long)(uintptr_t)&iov;
    up.nr = 1;
    if (b->len == 0 || sys_register(r->fd, IORING_REGISTER_BUFFERS_UPDATE, &up, sizeof up) < 0) {
        PyBuffer_Release(b);
        Py_RETURN_FALSE;
    }
    r->fixed_count++;
    Py_RETURN_TRUE;
}

PyDoc_STRVAR(send_doc,
"send(fd, buffer, user_data)\n\n"
"Prepare a send(2) of ``buffer`` on the socket ``fd`` (MSG_NOSIGNAL; the\n"
"buffer is held until the completion is reaped): the kernel waits for room\n"
"itself; res is the byte count sent (maybe fewer) or -errno.");

static PyObject *
ring_send(Ring *r, PyObject *args)
{
    int fd;
    PyObject *buf;
    unsigned long long ud;
    if (!PyArg_ParseTuple(args, "iOK:send", &fd, &buf, &ud))
        return NULL;
    return prep_buffer(r, IORING_OP_SEND, fd, buf, 0, ud);
}

PyDoc_STRVAR(accept_doc,
"accept(fd, user_data, multishot)\n\n"
"Prepare an accept on the listening socket ``fd`` (the new fd is\n"
"non-blocking and close-on-exec; no peer address). A multishot accept\n"
"(IORING_ACCEPT_MULTISHOT) posts a completion per connection, with\n"
"IORING_CQE_F_MORE while it stays armed; res is the new fd or -errno.");

static PyObject *
ring_accept(Ring *r, PyObject *args)
{
    int fd, multishot;
    unsigned long long ud;
    if (!PyArg_ParseTuple(args, "iKp:accept", &fd, &ud, &multishot))
        return NULL;
    if (check_fd(fd) < 0)
        return NULL;
    struct io_uring_sqe *sqe = get_sqe(r, IORING_OP_ACCEPT, fd, ud);
    if (sqe == NULL)
        return NULL;
    sqe->accept_flags = SOCK_NONBLOCK | SOCK_CLOEXEC;
    if (multishot)
        sqe->ioprio |= IORING_ACCEPT_MULTISHOT;
    publish(r);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(fsync_doc,
"fsync(fd, datasync, user_data)\n\n"
"Prepare an fsync (fdatasync when ``datasync``) of ``fd``.");

static PyObject *
ring_fsync(Ring *r, PyObject *args)
{
    int fd, datasync;
    unsigned long long ud;
    if (!PyArg_ParseTuple(args, "ipK:fsync", &fd, &datasync, &ud))
        return NULL;
    if (check_fd(fd) < 0)
        return NULL;
    struct io_uring_sqe *sqe = get_sqe(r, IORING_OP_FSYNC, fd, ud);
    if (sqe == NULL)
        return NULL;
    sqe->fsync_flags = datasync ? IORING_FSYNC_DATASYNC : 0;
    publish(r);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(nop_doc, "nop(user_data)\n\nPrepare a request that completes at once with res 0.");

static PyObject *
ring_nop(Ring *r, PyObject *arg)
{
    unsigned long long ud = PyLong_AsUnsignedLongLong(arg);
    if (ud == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    if (get_sqe(r, IORING_OP_NOP, -1, ud) == NULL)
        return NULL;
    publish(r);
    Py_RETURN_NONE;
}

/* What a completion gives as its result: the bytes received into a provided
 * buffer (copied out; the buffer lent again, published by the caller with
 * publish_buffers when *lent is set), else res as an int. NULL on error. */
static PyObject *
completion_result(Ring *r, struct io_uring_cqe *cqe, int *lent)
{
    if (!(cqe->flags & IORING_CQE_F_BUFFER) || r->br == NULL)
        return PyLong_FromLong(cqe->res);
    unsigned short bid = (unsigned short)(cqe->flags >> IORING_CQE_BUFFER_SHIFT);
    PyObject *data = cqe->res > 0
        ? PyBytes_FromStringAndSize(r->br_data + (size_t)bid * r->br_buf_size, cqe->res)
        : PyLong_FromLong(cqe->res);
    if (data != NULL) {
        lend_buffer(r, bid);
        *lent = 1;
    }
    return data;
}

/* The request of a completion without IORING_CQE_F_MORE is over: its held
 * buffer (if any) is released. */
static void
release_held(Ring *r, struct io_uring_cqe *cqe, PyObject *key)
{
    if (cqe->flags & IORING_CQE_F_MORE || PyDict_GET_SIZE(r->held) == 0)
        return;
    if (PyDict_Contains(r->held, key) > 0 && PyDict_DelItem(r->held, key) < 0)
        PyErr_Clear();
}

/* Move every posted completion into a new list; release held buffers of
 * the requests that are over. */
static PyObject *
reap(Ring *r)
{
    unsigned head = *r->cq_head;
    unsigned tail = __atomic_load_n(r->cq_tail, __ATOMIC_ACQUIRE);
    unsigned mask = *r->cq_mask;
    PyObject *out = PyList_New((Py_ssize_t)(tail - head));
    if (out == NULL)
        return NULL;
    Py_ssize_t i = 0;
    int lent = 0;
    for (; head != tail; head++, i++) {
        struct io_uring_cqe *cqe = &r->cqes[head & mask];
        PyObject *res = completion_result(r, cqe, &lent);
        PyObject *t = res == NULL ? NULL : Py_BuildValue("(KNI)", (unsigned long long)cqe->user_data, res, cqe->flags);
        if (t == NULL) {
            /* Keep what is not yet turned into tuples for the next reap. */
            __atomic_store_n(r->cq_head, head, __ATOMIC_RELEASE);
            if (lent)
                publish_buffers(r);
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, t);
        release_held(r, cqe, PyTuple_GET_ITEM(t, 0));
    }
    if (lent)
        publish_buffers(r);
    __atomic_store_n(r->cq_head, head, __ATOMIC_RELEASE);
    return out;
}

static int
has_completions(Ring *r)
{
    return *r->cq_head != __atomic_load_n(r->cq_tail, __ATOMIC_ACQUIRE);
}

PyDoc_STRVAR(poll_doc,
"poll(timeout) -> [(user_data, res, flags), ...]\n\n"
"Submit every prepared entry and collect the completions. ``timeout`` 0\n"
"never waits, a negative one waits for a completion without limit, else\n"
"for at most that many seconds; there is no wait when completions are\n"
"already posted, and no system call at all when, besides, nothing is to be\n"
"submitted. An interrupted wait returns what is there (after running the\n"
"signal handlers, whose exception propagates).");

/* poll()'s system call: submit, and wait when asked to and nothing is
 * posted. 0, or -1 with an exception. */
static int
enter_for_poll(Ring *r, double timeout)
{
    if (check_open(r) < 0)
        return -1;
    unsigned to_submit = unsubmitted(r);
    int ready = has_completions(r);
    unsigned wait = (timeout != 0.0 && !ready) ? 1 : 0;
    unsigned sqf = __atomic_load_n(r->sq_flags, __ATOMIC_RELAXED);
    if (to_submit || wait || (sqf & (IORING_SQ_CQ_OVERFLOW | IORING_SQ_TASKRUN))) {
        int ret = enter(r, to_submit, wait, timeout < 0 ? -1.0 : timeout);
        if (ret == -EINTR) {
            if (PyErr_CheckSignals() < 0)
                return -1;
        } else if (ret < 0 && ret != -ETIME && ret != -EBUSY && ret != -EAGAIN) {
            errno_error(-ret, "io_uring_enter");
            return -1;
        }
    }
    return 0;
}

static PyObject *
ring_poll(Ring *r, PyObject *arg)
{
    double timeout = PyFloat_AsDouble(arg);
    if (timeout == -1.0 && PyErr_Occurred())
        return NULL;
    if (enter_for_poll(r, timeout) < 0)
        return NULL;
    return reap(r);
}

PyDoc_STRVAR(dispatch_doc,
"dispatch(timeout, handlers) -> int\n\n"
"poll(timeout), with each completion handed straight to its handler:\n"
"``handlers[user_data](res, flags)`` for the user_data found in the dict\n"
"``handlers`` (the others are dropped), with no list or tuple made; how\n"
"many completions were reaped. A handler's exception propagates at once;\n"
"the completions after it stay posted for the next call.");

static PyObject *
ring_dispatch(Ring *r, PyObject *args)
{
    double timeout;
    PyObject *handlers;
    if (!PyArg_ParseTuple(args, "dO!:dispatch", &timeout, &PyDict_Type, &handlers))
        return NULL;
    if (enter_for_poll(r, timeout) < 0)
        return NULL;
    unsigned head = *r->cq_head;
    unsigned tail = __atomic_load_n(r->cq_tail, __ATOMIC_ACQUIRE);
    unsigned mask = *r->cq_mask;
    long count = 0;
    int lent = 0, failed = 0;
    Py_INCREF(handlers);
    for (; head != tail && !failed; head++, count++) {
        struct io_uring_cqe *cqe = &r->cqes[head & mask];
        PyObject *key = PyLong_FromUnsignedLongLong((unsigned long long)cqe->user_data);
        PyObject *res = key == NULL ? NULL : completion_result(r, cqe, &lent);
        if (res == NULL) {
            Py_XDECREF(key);
            failed = 1;
            break;  /* this completion stays posted */
        }
        /* Consumed from here on: the handler runs after the head moves,
         * so that a handler that polls again does not see it twice. */
        __atomic_store_n(r->cq_head, head + 1, __ATOMIC_RELEASE);
        release_held(r, cqe, key);
        unsigned flags = cqe->flags;
        PyObject *handler = PyDict_GetItemWithError(handlers, key);
        Py_DECREF(key);
        if (handler != NULL) {
            Py_INCREF(handler);
            PyObject *flags_obj = PyLong_FromUnsignedLong(flags);
            PyObject *call_args[2] = {res, flags_obj};
            PyObject *out = flags_obj == NULL ? NULL : PyObject_Vectorcall(handler, call_args, 2, NULL);
            Py_XDECREF(flags_obj);
            Py_DECREF(handler);
            if (out == NULL)
                failed = 1;
            Py_XDECREF(out);
        } else if (PyErr_Occurred()) {
            failed = 1;
        }
        Py_DECREF(res);
        if (r->fd < 0)
            break;  /* a handler closed the ring */
        head = *r->cq_head - 1;  /* a handler's own poll may have moved it */
        tail = __atomic_load_n(r->cq_tail, __ATOMIC_ACQUIRE);
    }
    if (lent && r->br != NULL)
        publish_buffers(r);
    Py_DECREF(handlers);
    if (failed)
        return NULL;
    return PyLong_FromLong(count);
}

PyDoc_STRVAR(submit_doc,
"submit() -> int\n\nHand the prepared entries to the kernel now, without waiting; how many.");

static PyObject *
ring_submit(Ring *r, PyObject *Py_UNUSED(ignored))
{
    if (check_open(r) < 0)
        return NULL;
    unsigned n = unsubmitted(r);
    if (n == 0)
        return PyLong_FromLong(0);
    int ret = enter(r, n, 0, 0.0);
    if (ret < 0 && ret != -EINTR && ret != -EBUSY && ret != -EAGAIN)
        return errno_error(-ret, "io_uring_enter");
    return PyLong_FromLong(ret < 0 ? 0 : ret);
}

PyDoc_STRVAR(probe_doc,
"supports(opcode) -> bool\n\nWhether this kernel's io_uring knows the operation (IORING_REGISTER_PROBE).");

static PyObject *
ring_supports(Ring *r, PyObject *arg)
{
    long op = PyLong_AsLong(arg);
    if (op == -1 && PyErr_Occurred())
        return NULL;
    if (check_open(r) < 0)
        return NULL;
    size_t size = sizeof(struct io_uring_probe) + 256 * sizeof(struct io_uring_probe_op);
    struct io_uring_probe *probe = PyMem_Calloc(1, size);
    if (probe == NULL)
        return PyErr_NoMemory();
    int ret = sys_register(r->fd, IORING_REGISTER_PROBE, probe, 256);
    int ok = 0;
    if (ret >= 0 && op >= 0 && op <= probe->last_op && op < 256)
        ok = (probe->ops[op].flags & IO_URING_OP_SUPPORTED) != 0;
    int err = errno;
    PyMem_Free(probe);
    if (ret < 0 && err != EINVAL)
        return errno_error(err, "io_uring_register(PROBE)");
    return PyBool_FromLong(ok);
}

PyDoc_STRVAR(close_doc,
"close()\n\nReap every read and write still in flight (waiting for the kernel to\n"
"finish with their buffers), then unmap the rings and close the fd.\n"
"Idempotent.");

static PyObject *
ring_close(Ring *r, PyObject *Py_UNUSED(ignored))
{
    if (r->fd < 0)
        Py_RETURN_NONE;
    /* Buffers the kernel may still write must outlive its requests: ask the
     * kernel to cancel whatever can be cancelled (a read on a socket that
     * never gets data), then reap until every request is over. */
    int rounds = 0;
    if (r->held != NULL && PyDict_GET_SIZE(r->held) > 0) {
        struct io_uring_sqe *sqe = get_sqe(r, IORING_OP_ASYNC_CANCEL, -1, 0);
        if (sqe == NULL) {
            PyErr_Clear();
        } else {
            sqe->cancel_flags = IORING_ASYNC_CANCEL_ANY;
            publish(r);
        }
    }
    while (r->held != NULL && PyDict_GET_SIZE(r->held) > 0 && rounds++ < 30) {
        unsigned n = unsubmitted(r);
        int ret = enter(r, n, 1, 1.0);
        if (ret < 0 && ret != -EINTR && ret != -ETIME && ret != -EBUSY && ret != -EAGAIN)
            break;
        PyObject *done = reap(r);
        if (done == NULL)
            PyErr_Clear();
        Py_XDECREF(done);
    }
    ring_unmap(r);
    if (r->held != NULL && PyDict_GET_SIZE(r->held) > 0) {
        /* The kernel kept requests past 30 s: their buffers are leaked on
         * purpose rather than freed under a write that may still come. */
        r->held = NULL;
    }
    Py_CLEAR(r->held);
    Py_RETURN_NONE;
}

static PyObject *
ring_fileno(Ring *r, PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromLong(r->fd);
}

static PyObject *
ring_get_features(Ring *r, void *c) { return PyLong_FromUnsignedLong(r->features); }
static PyObject *
ring_get_setup_flags(Ring *r, void *c) { return PyLong_FromUnsignedLong(r->setup_flags); }
static PyObject *
ring_get_sq_entries(Ring *r, void *c) { return PyLong_FromUnsignedLong(r->sq_entries); }
static PyObject *
ring_get_cq_entries(Ring *r, void *c) { return PyLong_FromUnsignedLong(r->cq_entries); }
static PyObject *
ring_get_in_flight(Ring *r, void *c) { return PyLong_FromSsize_t(r->held ? PyDict_GET_SIZE(r->held) : 0); }
static PyObject *
ring_get_unsubmitted(Ring *r, void *c) { return PyLong_FromUnsignedLong(r->fd < 0 ? 0 : unsubmitted(r)); }
static PyObject *
ring_get_closed(Ring *r, void *c) { return PyBool_FromLong(r->fd < 0); }
static PyObject *
ring_get_registered_buffers(Ring *r, void *c) { return PyLong_FromUnsignedLong(r->fixed_count); }

static PyGetSetDef ring_getset[] = {
    {"features", (getter)ring_get_features, NULL, "IORING_FEAT_* bits the kernel reported", NULL},
    {"setup_flags", (getter)ring_get_setup_flags, NULL, "IORING_SETUP_* flags the ring was made with", NULL},
    {"sq_entries", (getter)ring_get_sq_entries, NULL, "size of the submission ring", NULL},
    {"cq_entries", (getter)ring_get_cq_entries, NULL, "size of the completion ring", NULL},
    {"in_flight", (getter)ring_get_in_flight, NULL, "reads and writes whose buffer is still held", NULL},
    {"unsubmitted", (getter)ring_get_unsubmitted, NULL, "entries prepared and not yet taken by the kernel", NULL},
    {"closed", (getter)ring_get_closed, NULL, "whether close() ran", NULL},
    {"registered_buffers", (getter)ring_get_registered_buffers, NULL, "buffers registered with register_buffer", NULL},
    {NULL},
};

static PyMethodDef ring_methods[] = {
    {"poll_add", (PyCFunction)ring_poll_add, METH_VARARGS, poll_add_doc},
    {"poll_remove", (PyCFunction)ring_poll_remove, METH_VARARGS, poll_remove_doc},
    {"cancel", (PyCFunction)ring_cancel, METH_VARARGS, cancel_doc},
    {"read", (PyCFunction)ring_read, METH_VARARGS, read_doc},
    {"write", (PyCFunction)ring_write, METH_VARARGS, write_doc},
    {"fsync", (PyCFunction)ring_fsync, METH_VARARGS, fsync_doc},
    {"recv", (PyCFunction)ring_recv, METH_VARARGS, recv_doc},
    {"recv_multishot", (PyCFunction)ring_recv_multishot, METH_VARARGS, recv_multishot_doc},
    {"provide_buffers", (PyCFunction)ring_provide_buffers, METH_VARARGS, provide_buffers_doc},
    {"register_buffer", (PyCFunction)ring_register_buffer, METH_O, register_buffer_doc},
    {"send", (PyCFunction)ring_send, METH_VARARGS, send_doc},
    {"accept", (PyCFunction)ring_accept, METH_VARARGS, accept_doc},
    {"nop", (PyCFunction)ring_nop, METH_O, nop_doc},
    {"poll", (PyCFunction)ring_poll, METH_O, poll_doc},
    {"dispatch", (PyCFunction)ring_dispatch, METH_VARARGS, dispatch_doc},
    {"submit", (PyCFunction)ring_submit, METH_NOARGS, submit_doc},
    {"supports", (PyCFunction)ring_supports, METH_O, probe_doc},
    {"close", (PyCFunction)ring_close, METH_NOARGS, close_doc},
    {"fileno", (PyCFunction)ring_fileno, METH_NOARGS, "The io_uring fd."},
    {NULL},
};

static void
ring_dealloc(Ring *r)
{
    PyObject *res = ring_close(r, NULL);
    if (res == NULL)
        PyErr_Clear();
    Py_XDECREF(res);
    Py_TYPE(r)->tp_free((PyObject *)r);
}

static PyTypeObject RingType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "threadlib._kernel._uring.Ring",
    .tp_basicsize = sizeof(Ring),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Ring(entries=256): one io_uring instance (see the module docstring).",
    .tp_new = ring_new,
    .tp_init = (initproc)ring_init,
    .tp_dealloc = (destructor)ring_dealloc,
    .tp_methods = ring_methods,
    .tp_getset = ring_getset,
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "threadlib._kernel._uring",
    "One io_uring instance as a Python object (the kernel ABI, no liburing).", -1, NULL,
};

PyMODINIT_FUNC
PyInit__uring(void)
{
    if (PyType_Ready(&RingType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module_def);
    if (m == NULL)
        return NULL;
    Py_INCREF(&RingType);
    if (PyModule_AddObject(m, "Ring", (PyObject *)&RingType) < 0) {
        Py_DECREF(&RingType);
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "CQE_F_MORE", IORING_CQE_F_MORE) < 0
        || PyModule_AddIntConstant(m, "FEAT_EXT_ARG", IORING_FEAT_EXT_ARG) < 0
        || PyModule_AddIntConstant(m, "FEAT_NODROP", IORING_FEAT_NODROP) < 0
        || PyModule_AddIntConstant(m, "OP_POLL_ADD", IORING_OP_POLL_ADD) < 0
        || PyModule_AddIntConstant(m, "OP_POLL_REMOVE", IORING_OP_POLL_REMOVE) < 0
        || PyModule_AddIntConstant(m, "OP_READ", IORING_OP_READ) < 0
        || PyModule_AddIntConstant(m, "OP_WRITE", IORING_OP_WRITE) < 0
        || PyModule_AddIntConstant(m, "OP_FSYNC", IORING_OP_FSYNC) < 0
        || PyModule_AddIntConstant(m, "OP_ASYNC_CANCEL", IORING_OP_ASYNC_CANCEL) < 0
        || PyModule_AddIntConstant(m, "OP_RECV", IORING_OP_RECV) < 0
        || PyModule_AddIntConstant(m, "OP_SEND", IORING_OP_SEND) < 0
        || PyModule_AddIntConstant(m, "OP_ACCEPT", IORING_OP_ACCEPT) < 0
        || PyModule_AddIntConstant(m, "ASYNC_CANCEL_FD", IORING_ASYNC_CANCEL_FD) < 0
        || PyModule_AddIntConstant(m, "ASYNC_CANCEL_ALL", IORING_ASYNC_CANCEL_ALL) < 0
        || PyModule_AddIntConstant(m, "CQE_F_BUFFER", IORING_CQE_F_BUFFER) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
