/* What the sources of threadlib._kernel._speedups share: _speedups.c (the
 * run loop, the poll step, sockio's fast paths; the module), _green.c
 * (the greenlet front end's resume and blocking call) and _loop.c
 * (threadlib.loop's fd record). Nothing here may grow state: each source
 * keeps its own. */
#ifndef THREADLIB_SPEEDUPS_H
#define THREADLIB_SPEEDUPS_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* _speedups.c: a compiled Stream.recv in progress. */
extern PyTypeObject RecvCallType;

/* _speedups.c: the raised exception, normalized, with its traceback
 * attached; the error indicator is cleared. */
PyObject *take_exception(void);

/* _speedups.c: obj.name(a, b, c) with n of them, by vectorcall. */
PyObject *call_method(PyObject *obj, PyObject *name, PyObject *a, PyObject *b, PyObject *c, Py_ssize_t n);

/* _speedups.c: callable(first, *args, **kwargs), or with callable NULL
 * first.<name>(*args, **kwargs), from a vectorcall's arguments (nargs
 * positional, then the values of kwnames). */
PyObject *call_with_first(PyObject *callable, PyObject *name, PyObject *first, PyObject *const *args,
                          Py_ssize_t nargs, PyObject *kwnames);

/* _speedups.c: type.<def's name> becomes the compiled method def (its
 * docstring the signature plus the Python function's); the Python function
 * stays as type._<name>_spec, and *spec_out holds it. 0, or -1. */
int install_method(PyTypeObject *type, PyMethodDef *def, const char *signature, PyObject **spec_out);

/* _speedups.c: the offset of type's own __slots__ member name (an object
 * slot), read from its member descriptor. 0, or -1. */
int slot_offset(PyTypeObject *type, const char *name, Py_ssize_t *offset);

/* _green.c: readies its types and adds them and its functions to the module. */
int green_add_to_module(PyObject *module);

/* _loop.c: readies LoopWatch and adds it, run_handles and configure_loop to the module. */
int loop_add_to_module(PyObject *module);

#endif
