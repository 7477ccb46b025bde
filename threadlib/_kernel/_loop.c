/* threadlib._kernel._speedups, threadlib.loop's part: LoopWatch, the record
 * of one fd of the asyncio loop in the scheduler's poller, whose on_events
 * the poll step calls for every event of the loop's fds; call_soon, the
 * loop's method; and run_handles, the loop thread's batch.
 *
 * What they are for: each runs once or more per event or callback of every
 * asyncio transport and task on threadlib.loop, where in Python they are
 * frames each (the stock loop's selector and _process_events loops, three
 * frames per call_soon, one per handle run). loop.py's _PyWatch,
 * ThreadlibEventLoop._call_soon_spec and _run_batch stay the
 * specifications: these must do what they do, in the same order, with the
 * same exceptions.
 *
 * What they must never do: run a handle outside the loop thread's batch, or
 * wake anything but the waiting loop thread, through its worker, as the
 * specifications do.
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

/* loop._worker.wake() (_LoopWorker.wake, as _PyWatch inlines it): the
 * waiting loop thread resumed, unless the loop has halted. 0, or -1. */
static int
wake_loop_thread(PyObject *loop)
{
    PyObject *worker = PyObject_GetAttr(loop, s__worker);
    if (worker == NULL) {
        return -1;
    }
    PyObject *thread = PyObject_GetAttr(worker, s_thread);
    if (thread == NULL) {
        Py_DECREF(worker);
        return -1;
    }
    int wake = 0;
    if (thread != Py_None) {
        PyObject *halted = PyObject_GetAttr(loop, s__halted);
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
    return wake < 0 ? -1 : 0;
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
    if (wake_loop_thread(self->loop) == 0) {
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

/* -- call_soon and the batch: asyncio's Handle, made and run in place ---------------
 *
 * asyncio.events.Handle is a Python class with __slots__. call_soon sets a
 * new handle's slots where Handle.__init__ would (for a loop not in debug
 * mode: no source traceback), and run_handles runs a plain handle as
 * Handle._run does: its callback in its context, and an exception other
 * than SystemExit and KeyboardInterrupt given to loop._report_callback_error
 * (Handle._run's except clause). A handle of any other type is run by its
 * own _run. The slots' offsets are read from Handle's member descriptors
 * by configure_loop. */

static PyTypeObject *handle_type;      /* asyncio.events.Handle */
static PyObject *plain_handle_types;   /* types whose _run is Handle's: a tuple */
static PyObject *report_callback_error;
static PyObject *call_soon_spec;       /* ThreadlibEventLoop._call_soon_spec */
static Py_ssize_t off_callback, off_args, off_cancelled, off_loop, off_source_traceback, off_repr, off_context;
static PyObject *s__dormant, *s__debug, *s__closed, *s_popleft, *s__run, *s_context;

#define SLOT(obj, offset) (*(PyObject **)((char *)(obj) + (offset)))

/* Whether obj.name is true: 1, 0, or -1 on error. */
static int
attr_is_true(PyObject *obj, PyObject *name)
{
    PyObject *value = PyObject_GetAttr(obj, name);
    if (value == NULL) {
        return -1;
    }
    int is = PyObject_IsTrue(value);
    Py_DECREF(value);
    return is;
}

/* ThreadlibEventLoop.call_soon(callback, *args, context=None). */
static PyObject *
loop_call_soon(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *context = NULL;
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    if (nkw == 1 && PyUnicode_Check(PyTuple_GET_ITEM(kwnames, 0)) &&
        PyUnicode_Compare(PyTuple_GET_ITEM(kwnames, 0), s_context) == 0) {
        context = args[nargs];
    }
    int special = nargs < 1 || nkw > (context != NULL) ? 1 : attr_is_true(self, s__dormant);
    if (special == 0) {
        special = attr_is_true(self, s__debug);
    }
    if (special != 0) {  /* odd arguments, a dormant or debug loop (or an error): the specification */
        return special < 0 ? NULL : call_with_first(call_soon_spec, NULL, self, args, nargs, kwnames);
    }
    int closed = attr_is_true(self, s__closed);
    if (closed != 0) {
        if (closed > 0) {
            PyErr_SetString(PyExc_RuntimeError, "Event loop is closed");
        }
        return NULL;
    }
    PyObject *callback_args = PyTuple_New(nargs - 1);
    if (callback_args == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 1; i < nargs; i++) {
        PyTuple_SET_ITEM(callback_args, i - 1, Py_NewRef(args[i]));
    }
    context = context == NULL || context == Py_None ? PyContext_CopyCurrent() : Py_NewRef(context);
    PyObject *handle = context == NULL ? NULL : handle_type->tp_alloc(handle_type, 0);
    if (handle == NULL) {
        Py_DECREF(callback_args);
        Py_XDECREF(context);
        return NULL;
    }
    SLOT(handle, off_context) = context;
    SLOT(handle, off_loop) = Py_NewRef(self);
    SLOT(handle, off_callback) = Py_NewRef(args[0]);
    SLOT(handle, off_args) = callback_args;
    SLOT(handle, off_cancelled) = Py_NewRef(Py_False);
    SLOT(handle, off_repr) = Py_NewRef(Py_None);
    SLOT(handle, off_source_traceback) = Py_NewRef(Py_None);
    PyObject *ready = PyObject_GetAttr(self, s__ready);
    PyObject *r = ready == NULL ? NULL : call_method(ready, s_append, handle, NULL, NULL, 1);
    Py_XDECREF(ready);
    if (r == NULL) {
        Py_DECREF(handle);
        return NULL;
    }
    Py_DECREF(r);
    /* The loop thread, if it waits, is made ready (a call from a threadlib thread). */
    if (wake_loop_thread(self) < 0) {
        Py_DECREF(handle);
        return NULL;
    }
    return handle;
}

static PyMethodDef loop_call_soon_def = {
    "call_soon", (PyCFunction)(void (*)(void))loop_call_soon, METH_FASTCALL | METH_KEYWORDS, NULL,
};

/* A plain handle run as Handle._run does. 0, or -1 with SystemExit,
 * KeyboardInterrupt or the reporter's own error raised. */
static int
run_plain_handle(PyObject *handle)
{
    PyObject *context = SLOT(handle, off_context), *callback = SLOT(handle, off_callback);
    PyObject *callback_args = SLOT(handle, off_args);
    if (context == NULL || callback == NULL || callback_args == NULL || !PyTuple_Check(callback_args) ||
        !PyContext_CheckExact(context)) {
        PyObject *r = call_method(handle, s__run, NULL, NULL, NULL, 0);  /* whatever _run makes of it */
        Py_XDECREF(r);
        return r == NULL ? -1 : 0;
    }
    /* Held: the callback may cancel its own handle, which clears the slots. */
    Py_INCREF(context);
    Py_INCREF(callback);
    Py_INCREF(callback_args);
    PyObject *result = NULL;
    if (PyContext_Enter(context) == 0) {
        result = PyObject_Call(callback, callback_args, NULL);
        if (PyContext_Exit(context) < 0) {
            Py_CLEAR(result);
        }
    }
    Py_DECREF(context);
    Py_DECREF(callback);
    Py_DECREF(callback_args);
    if (result != NULL) {
        Py_DECREF(result);
        return 0;
    }
    if (PyErr_ExceptionMatches(PyExc_SystemExit) || PyErr_ExceptionMatches(PyExc_KeyboardInterrupt)) {
        return -1;
    }
    PyObject *exc = take_exception();
    PyObject *r = PyObject_CallFunctionObjArgs(report_callback_error, handle, exc, NULL);
    Py_DECREF(exc);
    Py_XDECREF(r);
    return r == NULL ? -1 : 0;
}

/* run_handles(ready): the loop thread's batch (loop.py's _run_batch). */
static PyObject *
run_handles(PyObject *module, PyObject *ready)
{
    if (plain_handle_types == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "run_handles: configure_loop was not called");
        return NULL;
    }
    Py_ssize_t count = PyObject_Size(ready);
    if (count < 0) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *handle = call_method(ready, s_popleft, NULL, NULL, NULL, 0);
        if (handle == NULL) {
            return NULL;
        }
        int plain = 0;
        for (Py_ssize_t t = 0; t < PyTuple_GET_SIZE(plain_handle_types); t++) {
            if (Py_IS_TYPE(handle, (PyTypeObject *)PyTuple_GET_ITEM(plain_handle_types, t))) {
                plain = 1;
                break;
            }
        }
        PyObject *cancelled_obj = plain ? Py_XNewRef(SLOT(handle, off_cancelled))
                                        : PyObject_GetAttr(handle, s__cancelled);
        int cancelled = cancelled_obj == NULL ? -1 : PyObject_IsTrue(cancelled_obj);
        Py_XDECREF(cancelled_obj);
        int failed = cancelled < 0;
        if (cancelled == 0) {
            if (plain) {
                failed = run_plain_handle(handle) < 0;
            }
            else {
                PyObject *r = call_method(handle, s__run, NULL, NULL, NULL, 0);
                failed = r == NULL;
                Py_XDECREF(r);
            }
        }
        Py_DECREF(handle);
        if (failed) {
            if (cancelled_obj == NULL && !PyErr_Occurred()) {
                PyErr_SetString(PyExc_AttributeError, "a ready handle without _cancelled");
            }
            return NULL;
        }
    }
    Py_RETURN_NONE;
}

/* configure_loop(ThreadlibEventLoop, Handle, plain_types, report_callback_error) */
static PyObject *
configure_loop(PyObject *module, PyObject *args)
{
    PyObject *loop_type, *handle, *plain, *report;
    if (!PyArg_ParseTuple(args, "O!O!O!O:configure_loop", &PyType_Type, &loop_type, &PyType_Type, &handle,
                          &PyTuple_Type, &plain, &report)) {
        return NULL;
    }
    for (Py_ssize_t t = 0; t < PyTuple_GET_SIZE(plain); t++) {
        PyObject *type = PyTuple_GET_ITEM(plain, t);
        if (!PyType_Check(type) || !PyType_IsSubtype((PyTypeObject *)type, (PyTypeObject *)handle)) {
            PyErr_SetString(PyExc_TypeError, "configure_loop: the plain handle types must be Handle's subtypes");
            return NULL;
        }
    }
    PyTypeObject *h = (PyTypeObject *)handle;
    if (slot_offset(h, "_callback", &off_callback) < 0 || slot_offset(h, "_args", &off_args) < 0 ||
        slot_offset(h, "_cancelled", &off_cancelled) < 0 || slot_offset(h, "_loop", &off_loop) < 0 ||
        slot_offset(h, "_source_traceback", &off_source_traceback) < 0 ||
        slot_offset(h, "_repr", &off_repr) < 0 || slot_offset(h, "_context", &off_context) < 0) {
        return NULL;
    }
    if (install_method((PyTypeObject *)loop_type, &loop_call_soon_def,
                       "call_soon($self, callback, /, *args, context=None)\n--\n\n", &call_soon_spec) < 0) {
        return NULL;
    }
    Py_XSETREF(handle_type, (PyTypeObject *)Py_NewRef(handle));
    Py_XSETREF(plain_handle_types, Py_NewRef(plain));
    Py_XSETREF(report_callback_error, Py_NewRef(report));
    Py_RETURN_NONE;
}

static PyMethodDef loop_functions[] = {
    {"run_handles", run_handles, METH_O,
     "run_handles(ready, /)\n--\n\n"
     "Run the handles in the deque ``ready`` when called, in order, as\n"
     "asyncio's Handle._run does (loop.py's _run_batch, the specification)."},
    {"configure_loop", configure_loop, METH_VARARGS,
     "configure_loop(ThreadlibEventLoop, Handle, plain_types, report_callback_error)\n--\n\n"
     "ThreadlibEventLoop.call_soon becomes the compiled method (its Python function\n"
     "stays as _call_soon_spec), and run_handles runs handles of plain_types in C."},
    {NULL},
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
    INTERN(s__dormant, "_dormant");
    INTERN(s__debug, "_debug");
    INTERN(s__closed, "_closed");
    INTERN(s_popleft, "popleft");
    INTERN(s__run, "_run");
    INTERN(s_context, "context");
#undef INTERN
    if (PyModule_AddFunctions(module, loop_functions) < 0) {
        return -1;
    }
    if (PyType_Ready(&LoopWatchType) < 0 ||
        PyModule_AddObjectRef(module, "LoopWatch", (PyObject *)&LoopWatchType) < 0) {
        return -1;
    }
    return 0;
}
