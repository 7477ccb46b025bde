/* threadlib._kernel._speedups, threadlib.loop's part: LoopWatch, the record
 * of one fd of the asyncio loop in the scheduler's poller, whose on_events
 * the poll step calls for every event of the loop's fds.
 *
 * What it is for: on_events runs once per event of every asyncio transport
 * on threadlib.loop, where the stock loop runs its selector's and
 * _process_events' loops; in Python it is a frame per event. loop.py's
 * _PyWatch stays the specification: this must do what it does, in the same
 * order, with the same exceptions.
 *
 * What it must never do: run a handle (the loop thread does), or wake
 * anything but the waiting loop thread, through its worker, as _PyWatch
 * does.
 */
#include "_speedups.h"
#include <structmember.h>
#include <sys/epoll.h>

#define READ_FIRED (EPOLLIN | EPOLLERR | EPOLLHUP)
#define WRITE_FIRED (EPOLLOUT | EPOLLERR | EPOLLHUP)
#define EVENT_READ 1   /* selectors.EVENT_READ */
#define EVENT_WRITE 2  /* selectors.EVENT_WRITE */

static PyObject *s_data, *s_events, *s_fd, *s__ready, *s_append, *s__cancelled, *s__remove_reader,
    *s__remove_writer, *s__worker, *s_thread, *s__halted, *s__sched, *s_resume;

typedef struct {
    PyObject_HEAD
    PyObject *key;           /* asyncio's SelectorKey: data is (reader, writer) */
    PyObject *loop;
    PyObject *ready_append;  /* loop._ready.append */
} LoopWatch;

static int
loopwatch_init(LoopWatch *self, PyObject *args, PyObject *kwargs)
{
    PyObject *key, *loop;
    static char *names[] = {"key", "loop", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO:LoopWatch", names, &key, &loop)) {
        return -1;
    }
    PyObject *ready = PyObject_GetAttr(loop, s__ready);
    if (ready == NULL) {
        return -1;
    }
    PyObject *append = PyObject_GetAttr(ready, s_append);
    Py_DECREF(ready);
    if (append == NULL) {
        return -1;
    }
    Py_XSETREF(self->key, Py_NewRef(key));
    Py_XSETREF(self->loop, Py_NewRef(loop));
    Py_XSETREF(self->ready_append, append);
    return 0;
}

/* A field of the key: by index when it is the namedtuple (fileobj, fd,
 * events, data), else by name; a new reference. */
static PyObject *
key_field(PyObject *key, Py_ssize_t index, PyObject *name)
{
    if (PyTuple_Check(key) && PyTuple_GET_SIZE(key) == 4) {
        return Py_NewRef(PyTuple_GET_ITEM(key, index));
    }
    return PyObject_GetAttr(key, name);
}

/* One side (reader or writer) of the fired fd: its handle queued, or the
 * fd's side removed when the handle was cancelled. 0, or -1 on error. */
static int
queue_side(LoopWatch *self, PyObject *handle, PyObject *fd, PyObject *remove)
{
    PyObject *cancelled = PyObject_GetAttr(handle, s__cancelled);
    int is = cancelled == NULL ? -1 : PyObject_IsTrue(cancelled);
    Py_XDECREF(cancelled);
    if (is < 0) {
        return -1;
    }
    PyObject *r = is ? call_method(self->loop, remove, fd, NULL, NULL, 1)
                     : PyObject_CallOneArg(self->ready_append, handle);
    Py_XDECREF(r);
    return r == NULL ? -1 : 0;
}

static PyObject *
loopwatch_on_events(LoopWatch *self, PyObject *fired_obj)
{
    long fired = PyLong_AsLong(fired_obj);
    if (fired == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (self->key == NULL || self->loop == NULL || self->ready_append == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "LoopWatch was not initialized");
        return NULL;
    }
    PyObject *key = Py_NewRef(self->key), *data = NULL, *fd = NULL, *events_obj = NULL, *result = NULL;
    PyObject *reader, *writer;
    if ((data = key_field(key, 3, s_data)) == NULL) {
        goto done;
    }
    if (!PyTuple_Check(data) || PyTuple_GET_SIZE(data) != 2) {  /* reader, writer = key.data */
        PyErr_SetString(PyExc_ValueError, "a loop watch's key.data must be (reader, writer)");
        goto done;
    }
    reader = PyTuple_GET_ITEM(data, 0);
    writer = PyTuple_GET_ITEM(data, 1);
    long events = 0;
    if ((fired & READ_FIRED && reader != Py_None) || (fired & WRITE_FIRED && writer != Py_None)) {
        if ((events_obj = key_field(key, 2, s_events)) == NULL || (fd = key_field(key, 1, s_fd)) == NULL) {
            goto done;
        }
        events = PyLong_AsLong(events_obj);
        if (events == -1 && PyErr_Occurred()) {
            goto done;
        }
    }
    if (fired & READ_FIRED && reader != Py_None && events & EVENT_READ &&
        queue_side(self, reader, fd, s__remove_reader) < 0) {
        goto done;
    }
    if (fired & WRITE_FIRED && writer != Py_None && events & EVENT_WRITE &&
        queue_side(self, writer, fd, s__remove_writer) < 0) {
        goto done;
    }
    /* _LoopWorker.wake, as _PyWatch inlines it. */
    PyObject *worker = PyObject_GetAttr(self->loop, s__worker);
    if (worker == NULL) {
        goto done;
    }
    PyObject *thread = PyObject_GetAttr(worker, s_thread);
    if (thread == NULL) {
        Py_DECREF(worker);
        goto done;
    }
    int wake = 0;
    if (thread != Py_None) {
        PyObject *halted = PyObject_GetAttr(self->loop, s__halted);
        int is_halted = halted == NULL ? -1 : PyObject_IsTrue(halted);
        Py_XDECREF(halted);
        wake = is_halted < 0 ? -1 : !is_halted;
    }
    if (wake > 0) {
        PyObject *sched = NULL;
        if (PyObject_SetAttr(worker, s_thread, Py_None) < 0 ||
            (sched = PyObject_GetAttr(worker, s__sched)) == NULL) {
            wake = -1;
        }
        else {
            PyObject *r = call_method(sched, s_resume, thread, NULL, NULL, 1);
            wake = r == NULL ? -1 : 1;
            Py_XDECREF(r);
        }
        Py_XDECREF(sched);
    }
    Py_DECREF(thread);
    Py_DECREF(worker);
    if (wake >= 0) {
        result = Py_NewRef(Py_None);
    }
done:
    Py_DECREF(key);
    Py_XDECREF(data);
    Py_XDECREF(fd);
    Py_XDECREF(events_obj);
    return result;
}

static int
loopwatch_traverse(LoopWatch *self, visitproc visit, void *arg)
{
    Py_VISIT(self->key);
    Py_VISIT(self->loop);
    Py_VISIT(self->ready_append);
    return 0;
}

static int
loopwatch_clear(LoopWatch *self)
{
    Py_CLEAR(self->key);
    Py_CLEAR(self->loop);
    Py_CLEAR(self->ready_append);
    return 0;
}

static void
loopwatch_dealloc(LoopWatch *self)
{
    PyObject_GC_UnTrack(self);
    loopwatch_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef loopwatch_methods[] = {
    {"on_events", (PyCFunction)loopwatch_on_events, METH_O,
     "on_events($self, fired, /)\n--\n\n"
     "The poller's callback: queue the fd's reader and/or writer handle (or\n"
     "drop a cancelled one's side), then wake the waiting loop thread."},
    {NULL},
};

static PyMemberDef loopwatch_members[] = {
    {"key", T_OBJECT_EX, offsetof(LoopWatch, key), 0, "asyncio's SelectorKey of the fd."},
    {"loop", T_OBJECT_EX, offsetof(LoopWatch, loop), 0, "The ThreadlibEventLoop."},
    {"ready_append", T_OBJECT_EX, offsetof(LoopWatch, ready_append), 0, "The loop's ready queue's append."},
    {NULL},
};

static PyTypeObject LoopWatchType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "threadlib._kernel._speedups.LoopWatch",
    .tp_basicsize = sizeof(LoopWatch),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "LoopWatch(key, loop): one fd of threadlib.loop in the poller (loop._PyWatch, compiled).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)loopwatch_init,
    .tp_dealloc = (destructor)loopwatch_dealloc,
    .tp_traverse = (traverseproc)loopwatch_traverse,
    .tp_clear = (inquiry)loopwatch_clear,
    .tp_methods = loopwatch_methods,
    .tp_members = loopwatch_members,
};

int
loop_add_to_module(PyObject *module)
{
#define INTERN(var, text) if ((var = PyUnicode_InternFromString(text)) == NULL) return -1
    INTERN(s_data, "data");
    INTERN(s_events, "events");
    INTERN(s_fd, "fd");
    INTERN(s__ready, "_ready");
    INTERN(s_append, "append");
    INTERN(s__cancelled, "_cancelled");
    INTERN(s__remove_reader, "_remove_reader");
    INTERN(s__remove_writer, "_remove_writer");
    INTERN(s__worker, "_worker");
    INTERN(s_thread, "thread");
    INTERN(s__halted, "_halted");
    INTERN(s__sched, "_sched");
    INTERN(s_resume, "resume");
#undef INTERN
    if (PyType_Ready(&LoopWatchType) < 0 ||
        PyModule_AddObjectRef(module, "LoopWatch", (PyObject *)&LoopWatchType) < 0) {
        return -1;
    }
    return 0;
}
