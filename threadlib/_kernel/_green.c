/* threadlib._kernel._speedups, the greenlet front end's part: the resume of
 * a green thread (GreenCoro, the base of frontends/green.py's GreenThread),
 * its blocking call (green_call, green.call) and the methods of the
 * blocking views (BlockingMethod, what green.wrap's classes are made of).
 *
 * What it is for: every step of a green thread passes through
 * GreenThread.send and every blocking call through a view's method and
 * call(). In Python each is a frame, with a StopIteration ending the
 * call's generator and a lookup of the running greenlet; here each is C
 * around the same greenlet methods (switch, throw, parent, dead). green.py
 * stays the specification (_GreenCoro, call, _blocking_method): this file
 * must do what they do, in the same order, with the same exceptions.
 *
 * What it must never do: switch greenlets except through greenlet's own
 * methods, or keep a reference to a greenlet, a call or a view after it
 * returns (a green thread blocked in a call names the call on its
 * greenlet's _driving, cleared when the call ends, for thread dumps).
 *
 * greenlet's own C API (greenlet.h) would save the method lookups, but
 * needs greenlet's headers at build time, which pip's isolated build does
 * not have; the methods cost a few dozen nanoseconds each.
 */
#include "_speedups.h"
#include <structmember.h>

/* Set by configure_green(). */
static PyTypeObject *green_glet_type;  /* green._GreenGlet: the greenlet class of green threads */
static PyObject *getcurrent;           /* greenlet.getcurrent */
static PyObject *drive;                /* threads.drive: a generator that drives any other awaitable */
static PyObject *done;                 /* DONE: a call finished when made */
static PyObject *wrap_result;          /* green._wrap_result */

static PyObject *s_parent, *s_switch, *s_throw_name, *s_dead, *s__driving, *s__target, *s___await__,
    *s_value_name;

/* ---------------------------------------------------------------- GreenCoro */

typedef struct {
    PyObject_HEAD
    PyObject *glet;  /* _glet: the green thread's greenlet */
} GreenCoro;

/* glet.parent = getcurrent(); glet.<how>(arg), as _GreenCoro.send and
 * throw do; *ended is glet.dead after it. The parent is only written when
 * it changes (writing the same parent is no change, and the setter checks
 * for cycles). */
static PyObject *
resume(PyObject *glet, PyObject *how, PyObject *arg, int *ended)
{
    PyObject *me = PyObject_CallNoArgs(getcurrent);
    if (me == NULL) {
        return NULL;
    }
    PyObject *parent = PyObject_GetAttr(glet, s_parent);
    if (parent == NULL) {
        Py_DECREF(me);
        return NULL;
    }
    int set = parent != me ? PyObject_SetAttr(glet, s_parent, me) : 0;
    Py_DECREF(parent);
    Py_DECREF(me);
    if (set < 0) {
        return NULL;
    }
    PyObject *args[2] = {glet, arg};
    PyObject *r = PyObject_VectorcallMethod(how, args, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    if (r == NULL) {
        return NULL;
    }
    PyObject *dead = PyObject_GetAttr(glet, s_dead);
    int is_dead = dead == NULL ? -1 : PyObject_IsTrue(dead);
    Py_XDECREF(dead);
    if (is_dead < 0) {
        Py_DECREF(r);
        return NULL;
    }
    *ended = is_dead;
    return r;
}

static PyObject *
green_glet(GreenCoro *self)
{
    if (self->glet == NULL) {
        PyErr_SetString(PyExc_AttributeError, "_glet");
        return NULL;
    }
    return Py_NewRef(self->glet);
}

/* The scheduler's step (PyIter_Send): the greenlet's next system call, or
 * its result when it ended, with no StopIteration. */
static PySendResult
greencoro_am_send(GreenCoro *self, PyObject *value, PyObject **result)
{
    PyObject *glet = green_glet(self);
    int ended = 0;
    *result = glet == NULL ? NULL : resume(glet, s_switch, value, &ended);
    Py_XDECREF(glet);
    if (*result == NULL) {
        return PYGEN_ERROR;
    }
    return ended ? PYGEN_RETURN : PYGEN_NEXT;
}

/* Raise StopIteration(value), as a generator's end does, and return NULL. */
static PyObject *
stop_with(PyObject *value)
{
    PyObject *stop = PyObject_CallOneArg(PyExc_StopIteration, value);
    Py_DECREF(value);
    if (stop != NULL) {
        PyErr_SetObject(PyExc_StopIteration, stop);
        Py_DECREF(stop);
    }
    return NULL;
}

static PyObject *
greencoro_send(GreenCoro *self, PyObject *value)
{
    PyObject *r;
    PySendResult how = greencoro_am_send(self, value, &r);
    return how == PYGEN_RETURN ? stop_with(r) : r;
}

static PyObject *
greencoro_throw(GreenCoro *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 3) {
        PyErr_SetString(PyExc_TypeError, "throw expected 1 to 3 arguments");
        return NULL;
    }
    PyObject *glet = green_glet(self);
    if (glet == NULL) {
        return NULL;
    }
    int ended = 0;
    PyObject *r = resume(glet, s_throw_name, args[0], &ended);
    Py_DECREF(glet);
    return r != NULL && ended ? stop_with(r) : r;
}

static int
greencoro_traverse(GreenCoro *self, visitproc visit, void *arg)
{
    Py_VISIT(self->glet);
    return 0;
}

static int
greencoro_clear(GreenCoro *self)
{
    Py_CLEAR(self->glet);
    return 0;
}

static void
greencoro_dealloc(GreenCoro *self)
{
    /* A subclass's dealloc (GreenThread's) drops its type's reference. */
    PyObject_GC_UnTrack(self);
    greencoro_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef greencoro_methods[] = {
    {"send", (PyCFunction)greencoro_send, METH_O,
     "send($self, value, /)\n--\n\n"
     "Run the greenlet until its next system call (returned) or its end\n"
     "(StopIteration with its result), as ``generator.send`` does."},
    {"throw", (PyCFunction)(void (*)(void))greencoro_throw, METH_FASTCALL,
     "throw($self, exc, /, *_)\n--\n\n"
     "Raise ``exc`` in the greenlet where it waits, as ``generator.throw`` does."},
    {NULL},
};

static PyMemberDef greencoro_members[] = {
    {"_glet", T_OBJECT_EX, offsetof(GreenCoro, glet), 0, "The green thread's greenlet."},
    {NULL},
};

static PyAsyncMethods greencoro_async = {
    .am_send = (sendfunc)greencoro_am_send,
};

static PyTypeObject GreenCoroType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "threadlib._kernel._speedups.GreenCoro",
    .tp_basicsize = sizeof(GreenCoro),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "A greenlet as the coroutine the scheduler drives (green._GreenCoro, compiled).",
    .tp_new = PyType_GenericNew,
    .tp_dealloc = (destructor)greencoro_dealloc,
    .tp_traverse = (traverseproc)greencoro_traverse,
    .tp_clear = (inquiry)greencoro_clear,
    .tp_as_async = &greencoro_async,
    .tp_methods = greencoro_methods,
    .tp_members = greencoro_members,
};

/* ---------------------------------------------------------------- green_call */

/* The running greenlet if it is a green thread's (a new reference); else
 * NULL with green.call's RuntimeError. */
static PyObject *
current_green(void)
{
    if (green_glet_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "green_call: configure_green() was not called");
        return NULL;
    }
    PyObject *me = PyObject_CallNoArgs(getcurrent);
    if (me != NULL && !Py_IS_TYPE(me, green_glet_type)) {
        Py_CLEAR(me);
        PyErr_SetString(PyExc_RuntimeError,
                        "this blocking call needs a green thread (threadlib.frontends.green.thread/spawn)");
    }
    return me;
}

/* Drive `call` (a generator, coroutine or compiled recv) to its end from the
 * green thread `me`: each system call goes to the scheduler's greenlet
 * (me.parent) and what comes back is sent in, or thrown in when the
 * scheduler delivered an exception. */
static PyObject *
drive_call(PyObject *me, PyObject *call)
{
    PyObject *value = Py_NewRef(Py_None), *error = NULL, *result = NULL;
    int named = 0;  /* me._driving is call */
    for (;;) {
        PyObject *sc;
        if (error == NULL) {
            PySendResult how = PyIter_Send(call, value, &sc);
            Py_CLEAR(value);
            if (how == PYGEN_RETURN) {
                result = sc;
                break;
            }
            if (how == PYGEN_ERROR) {
                break;
            }
        }
        else {
            sc = call_method(call, s_throw_name, error, NULL, NULL, 1);
            Py_CLEAR(error);
            if (sc == NULL) {
                if (PyErr_ExceptionMatches(PyExc_StopIteration)) {
                    PyObject *stop = take_exception();
                    result = PyObject_GetAttr(stop, s_value_name);
                    Py_DECREF(stop);
                }
                break;
            }
        }
        if (!named) {
            if (PyObject_SetAttr(me, s__driving, call) < 0) {
                Py_DECREF(sc);
                break;
            }
            named = 1;
        }
        PyObject *parent = PyObject_GetAttr(me, s_parent);
        if (parent == NULL) {
            Py_DECREF(sc);
            break;
        }
        PyObject *args[2] = {parent, sc};
        value = PyObject_VectorcallMethod(s_switch, args, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
        Py_DECREF(parent);
        Py_DECREF(sc);
        if (value == NULL) {  /* delivered by the scheduler: passed into the call */
            error = take_exception();
        }
    }
    if (named) {  /* the call's own exception, if any, is the one raised */
        PyObject *type = NULL, *exc = NULL, *tb = NULL;
        if (result == NULL) {
            PyErr_Fetch(&type, &exc, &tb);
        }
        if (PyObject_SetAttr(me, s__driving, Py_None) < 0) {
            if (result != NULL) {
                Py_CLEAR(result);
                return NULL;
            }
            PyErr_Clear();
        }
        if (result == NULL) {
            PyErr_Restore(type, exc, tb);
        }
    }
    return result;
}

/* green.call(awaitable) for a green thread `me` (a borrowed reference). */
static PyObject *
call_from(PyObject *me, PyObject *awaitable)
{
    if (awaitable == done) {
        Py_RETURN_NONE;  /* what driving it would return, with nothing to drive */
    }
    PyObject *call;
    if (PyGen_CheckExact(awaitable) || PyCoro_CheckExact(awaitable) || Py_IS_TYPE(awaitable, &RecvCallType)) {
        call = Py_NewRef(awaitable);  /* each has send and throw of its own */
    }
    else if ((call = PyObject_CallOneArg(drive, awaitable)) == NULL) {
        return NULL;
    }
    PyObject *result = drive_call(me, call);
    Py_DECREF(call);
    return result;
}

static PyObject *
green_call(PyObject *module, PyObject *awaitable)
{
    PyObject *me = current_green();
    if (me == NULL) {
        return NULL;
    }
    PyObject *result = call_from(me, awaitable);
    Py_DECREF(me);
    return result;
}

/* ---------------------------------------------------------------- BlockingMethod */

typedef struct {
    PyObject_HEAD
    PyObject *name;  /* the target's method this one blocks on */
    vectorcallfunc vectorcall;
} BlockingMethod;

/* view.NAME(*args, **kwargs): view._target.NAME(*args, **kwargs), blocked
 * on when it is awaitable, its result wrapped (bytes and None as they are). */
static PyObject *
blocking_method_vectorcall(BlockingMethod *m, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs < 1) {
        PyErr_Format(PyExc_TypeError, "%U() needs the view it is a method of", m->name);
        return NULL;
    }
    PyObject *target = PyObject_GetAttr(args[0], s__target);
    if (target == NULL) {
        return NULL;
    }
    /* The target in the view's place. */
    PyObject *result = call_with_first(NULL, m->name, target, args + 1, nargs - 1, kwnames);
    Py_DECREF(target);
    if (result == NULL || result == Py_None || PyBytes_CheckExact(result)) {
        return result;
    }
    int awaitable = PyGen_CheckExact(result) || PyCoro_CheckExact(result);
    if (!awaitable) {
        PyTypeObject *type = Py_TYPE(result);
        if (type->tp_as_async != NULL && type->tp_as_async->am_await != NULL) {
            awaitable = 1;
        }
        else {  /* hasattr(result, "__await__") */
            PyObject *attr = PyObject_GetAttr(result, s___await__);
            if (attr != NULL) {
                awaitable = 1;
                Py_DECREF(attr);
            }
            else if (PyErr_ExceptionMatches(PyExc_AttributeError)) {
                PyErr_Clear();
            }
            else {
                Py_DECREF(result);
                return NULL;
            }
        }
    }
    if (awaitable) {
        Py_SETREF(result, green_call(NULL, result));
        if (result == NULL || result == Py_None || PyBytes_CheckExact(result)) {
            return result;
        }
    }
    Py_SETREF(result, PyObject_CallOneArg(wrap_result, result));
    return result;
}

static PyObject *
blocking_method_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    PyObject *name;
    if (!PyArg_ParseTuple(args, "U:BlockingMethod", &name)) {
        return NULL;
    }
    if (kwargs != NULL && PyDict_GET_SIZE(kwargs) != 0) {
        PyErr_SetString(PyExc_TypeError, "BlockingMethod takes no keyword arguments");
        return NULL;
    }
    BlockingMethod *m = (BlockingMethod *)type->tp_alloc(type, 0);
    if (m == NULL) {
        return NULL;
    }
    m->name = Py_NewRef(name);
    m->vectorcall = (vectorcallfunc)blocking_method_vectorcall;
    return (PyObject *)m;
}

static void
blocking_method_dealloc(BlockingMethod *m)
{
    Py_XDECREF(m->name);
    Py_TYPE(m)->tp_free((PyObject *)m);
}

/* As a function: bound to the view it is read from. */
static PyObject *
blocking_method_get(PyObject *m, PyObject *view, PyObject *type)
{
    if (view == NULL || view == Py_None) {
        return Py_NewRef(m);
    }
    return PyMethod_New(m, view);
}

static PyObject *
blocking_method_repr(BlockingMethod *m)
{
    return PyUnicode_FromFormat("<blocking method %U>", m->name);
}

static PyMemberDef blocking_method_members[] = {
    {"__name__", T_OBJECT, offsetof(BlockingMethod, name), READONLY, "The target's method it blocks on."},
    {NULL},
};

static PyTypeObject BlockingMethodType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "threadlib._kernel._speedups.BlockingMethod",
    .tp_basicsize = sizeof(BlockingMethod),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_VECTORCALL | Py_TPFLAGS_METHOD_DESCRIPTOR,
    .tp_doc = "BlockingMethod(name): a blocking view's method (green._blocking_method(name), compiled).",
    .tp_new = blocking_method_new,
    .tp_dealloc = (destructor)blocking_method_dealloc,
    .tp_repr = (reprfunc)blocking_method_repr,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(BlockingMethod, vectorcall),
    .tp_descr_get = blocking_method_get,
    .tp_members = blocking_method_members,
};

/* ---------------------------------------------------------------- configure */

static PyObject *
configure_green(PyObject *module, PyObject *args)
{
    PyObject *glet_type, *get, *drv, *dn, *wrap;
    if (!PyArg_ParseTuple(args, "O!OOOO:configure_green", &PyType_Type, &glet_type, &get, &drv, &dn, &wrap)) {
        return NULL;
    }
    Py_XSETREF(green_glet_type, (PyTypeObject *)Py_NewRef(glet_type));
    Py_XSETREF(getcurrent, Py_NewRef(get));
    Py_XSETREF(drive, Py_NewRef(drv));
    Py_XSETREF(done, Py_NewRef(dn));
    Py_XSETREF(wrap_result, Py_NewRef(wrap));
    Py_RETURN_NONE;
}

static PyMethodDef green_functions[] = {
    {"green_call", (PyCFunction)green_call, METH_O,
     "green_call($module, awaitable, /)\n--\n\n"
     "green.call, compiled: run a threadlib call to its end from a green thread."},
    {"configure_green", configure_green, METH_VARARGS,
     "configure_green(green_greenlet_type, getcurrent, drive, DONE, wrap_result): set by green.py."},
    {NULL},
};

int
green_add_to_module(PyObject *module)
{
#define INTERN(var, text) if ((var = PyUnicode_InternFromString(text)) == NULL) return -1
    INTERN(s_parent, "parent");
    INTERN(s_switch, "switch");
    INTERN(s_throw_name, "throw");
    INTERN(s_dead, "dead");
    INTERN(s__driving, "_driving");
    INTERN(s__target, "_target");
    INTERN(s___await__, "__await__");
    INTERN(s_value_name, "value");
#undef INTERN
    if (PyType_Ready(&GreenCoroType) < 0 || PyType_Ready(&BlockingMethodType) < 0 ||
        PyModule_AddObjectRef(module, "GreenCoro", (PyObject *)&GreenCoroType) < 0 ||
        PyModule_AddObjectRef(module, "BlockingMethod", (PyObject *)&BlockingMethodType) < 0 ||
        PyModule_AddFunctions(module, green_functions) < 0) {
        return -1;
    }
    return 0;
}
