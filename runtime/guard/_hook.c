/* polc.runtime.guard._hook: the guard's audit hook in C (optional; runtime/guard/accel.py).
 *
 * One hook registered with PySys_AddAuditHook filters what the pure-Python
 * hook (Guard.hook) would find nothing to do for, and calls that hook for
 * everything else (with the calling frame, Guard.from_c):
 *
 *   - an event no handler wants: returns at once (a hash probe of its name);
 *   - an event whose handler has work to do whoever raised it (one that
 *     changes how paths resolve): always calls the Python hook;
 *   - otherwise the calling stack is walked, every frame, outwards from the
 *     frame that called the operation; each frame's module name
 *     (f_globals["__name__"]) is looked up in the guard's classification of
 *     the current snapshot (a dict: name -> owner, None when ungoverned).
 *     The Python hook is called unless every frame's module is known to be
 *     ungoverned or polc's own, nothing was inherited through a hand-off,
 *     and the classification belongs to the agent's current snapshot.
 *
 * So the C hook only ever skips the Python hook where it would have found
 * nothing governed; whenever it cannot tell (a name not classified yet, a
 * new snapshot, an error of its own) it calls the Python hook, which
 * decides, and whose exceptions (a denial, a fault: fail closed) propagate.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>
#include <time.h>

/* CPython 3.11 only, with the GIL: the walks read the interpreter's frames and the verdict
   cache relies on PyDictObject.ma_version_tag changing with every change of a dict (PEP 699
   gives no such promise from 3.12 on). Elsewhere the build fails, setup.py's optional=True
   makes that "not built", and the guard uses its Python hook. */
#if PY_VERSION_HEX < 0x030B0000 || PY_VERSION_HEX >= 0x030C0000
#error "polc.runtime.guard._hook is for CPython 3.11 only (the Python hook is used elsewhere)"
#endif
#ifdef Py_GIL_DISABLED
#error "polc.runtime.guard._hook needs the GIL (the Python hook is used without it)"
#endif
#define POLC_FRAME_WALK_INTERNAL 1
#define Py_BUILD_CORE 1
#include "internal/pycore_frame.h"
#include "internal/pycore_dict.h"
#undef Py_BUILD_CORE

#define TABLE_SIZE 256 /* a power of two, well above the number of events */

typedef struct {
    char *name;      /* NULL: an empty slot */
    PyObject *event; /* the name as a str, passed to the Python hook */
    int always;      /* always call the Python hook */
    int memo;        /* MEMO_ADDRESS, MEMO_POPEN, MEMO_OPEN: allows remembered per request (configure_memo) */
} Slot;

/* Kinds of events whose allowed requests the Python side remembers, per snapshot, in the memo
   dict (Guard.memo): key -> (the allowed counter to advance, valid until (time.monotonic())). */
enum { MEMO_NONE = 0, MEMO_ADDRESS = 1, MEMO_POPEN = 2, MEMO_OPEN = 3 };

static Slot table[TABLE_SIZE];
static PyObject *dispatch = NULL;     /* the Python hook: dispatch(event, args, frame) */
static PyObject *agent = NULL;        /* the agent: its _snapshot is the current snapshot */
static PyObject *inherited = NULL;    /* the context variable of what a hand-off carries */
static PyObject *polc_owner = NULL;   /* the owner of polc's own frames */
static PyObject *names = NULL;        /* module name -> owner or None, for the snapshot below */
static PyObject *names_snap = NULL;
static PyObject *str_name = NULL;     /* "__name__" */
static PyObject *str_snapshot = NULL; /* "_snapshot" */
static PyInterpreterState *main_interp = NULL;
static int installed = 0;
static int hook_added = 0;  /* the hook is in the runtime's list (it saw the probe) */
static int probing = 0, probe_seen = 0;
#define PROBE_EVENT "polc.guard.probe"
static unsigned long long skipped = 0, dispatched = 0, remembered = 0;

/* configure_memo() and set_names() */
static PyObject *memo = NULL;         /* this snapshot's remembered allows, or NULL */
static PyObject *busy = NULL;         /* the guard's set of thread ids inside a handler */
static PyObject *stops = NULL;        /* the guard's thread id -> frame its walks stop at */
static PyObject *family_descr = NULL; /* _socket.socket's family getter */
static long inet_families[2];
static PyObject *os_dict = NULL;      /* the os module's namespace */
static PyObject *os_environ = NULL;   /* os.environ when the memo was configured */
static PyTypeObject *count_type = NULL;
static PyObject *str_environ = NULL, *str_data = NULL, *bytes_path = NULL;
static PyObject *tag_address = NULL, *tag_exec = NULL, *tag_read = NULL, *tag_write = NULL;
static PyObject *open_exempt = NULL;  /* module names whose own opens the Python hook examines first */
static long o_accmode, o_rdonly, o_wronly, o_write_flags; /* os.O_ACCMODE, ..., O_CREAT | O_TRUNC | O_APPEND */

static size_t
hash_name(const char *s)
{
    size_t h = 1469598103934665603ULL;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ULL;
    }
    return h;
}

static Slot *
lookup(const char *event)
{
    size_t i = hash_name(event) & (TABLE_SIZE - 1);
    for (;;) {
        Slot *slot = &table[i];
        if (slot->name == NULL)
            return NULL;
        if (strcmp(slot->name, event) == 0)
            return slot;
        i = (i + 1) & (TABLE_SIZE - 1);
    }
}

/* The verdict of globals_need_python per module globals, for one classification (generation)
   and one version of the dict (ma_version_tag changes with every change to it, __name__ too).
   An entry holds a reference to its dict, so its address is not reused while it is there. */
#define VERDICTS 512
typedef struct {
    PyObject *globals;
    uint64_t version;
    unsigned long generation;
    int verdict;
} Verdict;
static Verdict verdicts[VERDICTS];
static unsigned long generation = 1; /* set_names starts a new one */

static int globals_lookup(PyObject *globals);

/* An exact dict whose keys are all exact str: looking a str up in it runs no Python code
   (no key's __eq__ or __hash__). Any other dict goes to the Python side. */
static int
plain_dict(PyObject *d)
{
    return d != NULL && PyDict_CheckExact(d) && ((PyDictObject *)d)->ma_keys->dk_kind != DICT_KEYS_GENERAL;
}

static void
clear_verdicts(void)
{
    for (int i = 0; i < VERDICTS; i++) {
        PyObject *old = verdicts[i].globals;
        verdicts[i].globals = NULL;
        Py_XDECREF(old);
    }
}

/* 1: the module of these globals may be governed (or cannot be told): the Python hook decides;
   0: known ungoverned or polc's own. Never leaves an exception set. */
static int
globals_need_python(PyObject *globals)
{
    if (globals == NULL || !PyDict_CheckExact(globals))
        return globals_lookup(globals);
    Verdict *v = &verdicts[((uintptr_t)globals >> 4) & (VERDICTS - 1)];
    uint64_t version = ((PyDictObject *)globals)->ma_version_tag;
    if (v->globals == globals && v->version == version && v->generation == generation)
        return v->verdict;
    int verdict = globals_lookup(globals);
    if (verdict == 0 && ((PyDictObject *)globals)->ma_version_tag == version) {
        /* known ungoverned (not "not classified yet", which changes): remembered */
        PyObject *old = v->globals;
        Py_INCREF(globals);
        v->globals = globals;
        v->version = version;
        v->generation = generation;
        v->verdict = 0;
        Py_XDECREF(old); /* last: freeing it may run code that comes back here */
    }
    return verdict;
}

static int
globals_lookup(PyObject *globals)
{
    if (!plain_dict(globals) || !plain_dict(names))
        return 1; /* a lookup could run foreign code: the Python hook decides */
    PyObject *name = PyDict_GetItemWithError(globals, str_name); /* borrowed */
    if (name == NULL) {
        if (PyErr_Occurred()) {
            PyErr_Clear();
            return 1;
        }
        return 0; /* no __name__: the Python walk classifies it as ungoverned */
    }
    if (!PyUnicode_CheckExact(name))
        return 0; /* the Python walk ignores a name that is not a plain str */
    Py_INCREF(name); /* the lookup below may run code that changes the globals */
    PyObject *owner = PyDict_GetItemWithError(names, name); /* borrowed */
    Py_DECREF(name);
    if (owner == NULL) {
        if (PyErr_Occurred())
            PyErr_Clear();
        return 1; /* not classified yet */
    }
    return !(owner == Py_None || owner == polc_owner);
}

/* 1: a frame of the calling stack may be governed; 0: none is. */
static int
stack_needs_python(void)
{
#ifdef POLC_FRAME_WALK_INTERNAL
    PyThreadState *tstate = PyThreadState_Get();
    _PyInterpreterFrame *f = tstate->cframe->current_frame;
    PyObject *last = NULL;
    for (; f != NULL; f = f->previous) {
        if (_PyFrame_IsIncomplete(f))
            continue; /* not started: f_back skips it too */
        PyObject *g = f->f_globals;
        if (g == last)
            continue;
        last = g;
        if (globals_need_python(g))
            return 1;
    }
    return 0;
#endif
}

/* 1: whatever the stack holds, the Python hook must see the event: no classification yet, one
   for another snapshot than the agent's, or something inherited through a hand-off; 0: the
   stack decides. Never leaves an exception set. */
static int
context_needs_python(void)
{
    if (names == NULL)
        return 1;
    PyObject *snap = PyObject_GetAttr(agent, str_snapshot);
    if (snap == NULL) {
        PyErr_Clear();
        return 1;
    }
    Py_DECREF(snap); /* only its identity is compared; the agent holds it */
    if (snap != names_snap)
        return 1;
    PyObject *carried = NULL;
    if (PyContextVar_Get(inherited, Py_None, &carried) < 0) {
        PyErr_Clear();
        return 1;
    }
    int truth = carried == Py_None ? 0 : PyObject_IsTrue(carried);
    Py_XDECREF(carried);
    if (truth != 0) {
        if (truth < 0)
            PyErr_Clear();
        return 1;
    }
    return 0;
}

/* 1: the Python hook must see this event; 0: it would find nothing governed. */
static int
needs_python(void)
{
    if (context_needs_python())
        return 1;
    return stack_needs_python();
}

#define MAX_OWNERS 8

/* The remembered-allow fast path of an address (socket.connect, socket.sendto), an open or a
   subprocess.Popen event: 0, nothing governed is on the stack (as needs_python() == 0);
   1, every governed module on the stack was allowed this very request before under the current
   snapshot (its allowed counter is advanced here, as the Python hook would); 2, anything else:
   the Python hook decides. Holds a strong reference to everything it reads across any call that
   could run other code; never leaves an exception set. */
static int
memo_fast(Slot *slot, PyObject *args)
{
    if (memo == NULL || !PyDict_CheckExact(memo) || context_needs_python())
        return 2;

    /* the governed owners (module, package) of the stack, innermost package per module */
    PyObject *modules[MAX_OWNERS], *packages[MAX_OWNERS], *counters[2 * MAX_OWNERS];
    int n = 0, ncounters = 0, result = 2;
    PyObject *inner_globals = NULL;
    PyThreadState *tstate = PyThreadState_Get();
    _PyInterpreterFrame *f = tstate->cframe->current_frame;
    PyObject *last = NULL;
    for (; f != NULL; f = f->previous) {
        if (_PyFrame_IsIncomplete(f))
            continue;
        PyObject *g = f->f_globals;
        if (inner_globals == NULL)
            inner_globals = Py_NewRef(g); /* the innermost frame's: looked at once a governed frame is found */
        if (g == last)
            continue;
        last = g;
        /* an open before the first governed frame: polc's own frame must be told from an ungoverned
           one (the verdicts do not), it leaves the open to the Python hook below */
        if (!(slot->memo == MEMO_OPEN && n == 0) && !globals_need_python(g))
            continue; /* known ungoverned or polc's own */
        if (!plain_dict(g) || !plain_dict(names))
            goto out;
        PyObject *name = PyDict_GetItemWithError(g, str_name);
        if (name == NULL || !PyUnicode_CheckExact(name)) {
            PyErr_Clear();
            goto out;
        }
        PyObject *owner = PyDict_GetItemWithError(names, name); /* str keys: no foreign code */
        if (owner == NULL) {
            PyErr_Clear();
            goto out; /* not classified yet */
        }
        if (owner == polc_owner && n == 0 && slot->memo == MEMO_OPEN)
            goto out; /* polc's own frame innermost to every governed one (its reads of the policy directory) */
        if (owner == Py_None || owner == polc_owner)
            continue;
        if (!PyTuple_CheckExact(owner) || PyTuple_GET_SIZE(owner) != 2 ||
            !PyUnicode_CheckExact(PyTuple_GET_ITEM(owner, 0)) || !PyUnicode_CheckExact(PyTuple_GET_ITEM(owner, 1)))
            goto out;
        PyObject *module = PyTuple_GET_ITEM(owner, 0);
        int seen = 0;
        for (int k = 0; k < n; k++) {
            if (PyUnicode_Compare(modules[k], module) == 0) { /* exact str: no foreign code */
                seen = 1;
                break;
            }
        }
        if (PyErr_Occurred()) {
            PyErr_Clear();
            goto out;
        }
        if (seen)
            continue;
        if (n == MAX_OWNERS)
            goto out;
        modules[n] = Py_NewRef(module);
        packages[n] = Py_NewRef(PyTuple_GET_ITEM(owner, 1));
        n++;
    }
    if (n == 0) {
        result = 0; /* nothing governed on the whole stack: none on the part a stop frame leaves either */
        goto out;
    }
    if (stops == NULL || !PyDict_CheckExact(stops) || PyDict_GET_SIZE(stops) != 0)
        goto out; /* a detached call's walk stops part-way: the Python walk knows where */
    if (slot->memo == MEMO_OPEN) {
        /* the import system, tokenize (linecache) innermost: the Python hook tells whether the open
           is the interpreter's own (not attributed, not counted) */
        PyObject *inner = inner_globals != NULL && plain_dict(inner_globals) ?
                          PyDict_GetItemWithError(inner_globals, str_name) : NULL;
        if (inner == NULL || !PyUnicode_CheckExact(inner) || open_exempt == NULL) {
            PyErr_Clear();
            goto out;
        }
        int exempt = PySet_Contains(open_exempt, inner); /* a frozenset of str, an exact str: no foreign code */
        if (exempt != 0) {
            if (exempt < 0)
                PyErr_Clear();
            goto out;
        }
    }
    PyObject *tid = PyLong_FromUnsignedLong(PyThread_get_thread_ident());
    if (tid == NULL) {
        PyErr_Clear();
        goto out;
    }
    int inside = busy != NULL && PySet_CheckExact(busy) ? PySet_Contains(busy, tid) : -1;
    Py_DECREF(tid);
    if (inside != 0) { /* the guard's own work (or cannot tell): the Python hook's to skip */
        if (inside < 0)
            PyErr_Clear();
        goto out;
    }

    /* the request as the Python side keyed it */
    PyObject *tags[2] = {NULL, NULL}, *what = NULL, *detail = NULL; /* detail: the port, os.environ's raw PATH, the flags */
    if (!PyTuple_CheckExact(args))
        goto out;
    if (slot->memo == MEMO_ADDRESS) {
        if (PyTuple_GET_SIZE(args) != 2 || family_descr == NULL)
            goto out;
        PyObject *sock = PyTuple_GET_ITEM(args, 0), *address = PyTuple_GET_ITEM(args, 1);
        descrgetfunc get = Py_TYPE(family_descr)->tp_descr_get;
        if (get == NULL)
            goto out;
        PyObject *family = get(family_descr, sock, (PyObject *)Py_TYPE(sock)); /* TypeError: not a socket */
        if (family == NULL) {
            PyErr_Clear();
            goto out;
        }
        long fam = PyLong_CheckExact(family) ? PyLong_AsLong(family) : -1;
        Py_DECREF(family);
        if (fam == -1 && PyErr_Occurred())
            PyErr_Clear();
        if (fam != inet_families[0] && fam != inet_families[1])
            goto out;
        if (!PyTuple_CheckExact(address) || PyTuple_GET_SIZE(address) < 2 ||
            !PyUnicode_CheckExact(PyTuple_GET_ITEM(address, 0)) || !PyLong_CheckExact(PyTuple_GET_ITEM(address, 1)))
            goto out;
        tags[0] = tag_address;
        what = Py_NewRef(PyTuple_GET_ITEM(address, 0));
        detail = Py_NewRef(PyTuple_GET_ITEM(address, 1));
    }
    else if (slot->memo == MEMO_POPEN) {
        if (PyTuple_GET_SIZE(args) != 4 || PyTuple_GET_ITEM(args, 2) != Py_None || PyTuple_GET_ITEM(args, 3) != Py_None)
            goto out; /* a cwd or an environment of its own: the Python hook */
        PyObject *executable = PyTuple_GET_ITEM(args, 0), *argv = PyTuple_GET_ITEM(args, 1);
        if (executable == Py_None) {
            if (PyList_CheckExact(argv) && PyList_GET_SIZE(argv) > 0)
                executable = PyList_GET_ITEM(argv, 0);
            else if (PyTuple_CheckExact(argv) && PyTuple_GET_SIZE(argv) > 0)
                executable = PyTuple_GET_ITEM(argv, 0);
            else
                goto out;
        }
        if (!PyUnicode_CheckExact(executable))
            goto out;
        what = Py_NewRef(executable);
        /* the PATH a bare name is looked up on: os.environ's own bytes, as events.executable_of reads them */
        if (os_dict == NULL || !plain_dict(os_dict))
            goto out_key;
        PyObject *environ = PyDict_GetItemWithError(os_dict, str_environ);
        if (environ == NULL || environ != os_environ) {
            PyErr_Clear();
            goto out_key;
        }
        Py_INCREF(environ);
        PyObject *data = PyObject_GetAttr(environ, str_data);
        Py_DECREF(environ);
        if (data == NULL || !PyDict_CheckExact(data)) {
            PyErr_Clear();
            Py_XDECREF(data);
            goto out_key;
        }
        PyObject *raw = PyDict_GetItemWithError(data, bytes_path);
        if (raw == NULL && PyErr_Occurred()) {
            PyErr_Clear();
            Py_DECREF(data);
            goto out_key;
        }
        detail = raw != NULL ? Py_NewRef(raw) : Py_NewRef(Py_None);
        Py_DECREF(data);
        if (detail != Py_None && !PyBytes_CheckExact(detail))
            goto out_key;
        tags[0] = tag_exec;
    }
    else if (slot->memo == MEMO_OPEN) {
        /* open(path, mode, flags): an absolute str path without NUL, int flags, as events._open keys it */
        if (PyTuple_GET_SIZE(args) != 3)
            goto out;
        PyObject *path = PyTuple_GET_ITEM(args, 0), *flags = PyTuple_GET_ITEM(args, 2);
        if (!PyUnicode_CheckExact(path) || !PyLong_CheckExact(flags) || PyUnicode_READY(path) < 0 ||
            PyUnicode_GET_LENGTH(path) == 0 || PyUnicode_READ_CHAR(path, 0) != '/') {
            PyErr_Clear();
            goto out;
        }
        Py_ssize_t nul = PyUnicode_FindChar(path, 0, 0, PyUnicode_GET_LENGTH(path), 1);
        if (nul != -1) {
            if (nul == -2)
                PyErr_Clear();
            goto out;
        }
        long fl = PyLong_AsLong(flags);
        if (fl == -1 && PyErr_Occurred()) {
            PyErr_Clear();
            goto out;
        }
        long access = fl & o_accmode;
        int i = 0;
        if (access != o_wronly)
            tags[i++] = tag_read;
        if (access != o_rdonly || (fl & o_write_flags))
            tags[i++] = tag_write;
        what = Py_NewRef(path);
        detail = Py_NewRef(flags);
    }
    else
        goto out;

    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0)
        goto out_key;
    double now = (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
    for (int k = 0; k < n; k++)
    for (int t = 0; t < 2 && tags[t] != NULL; t++) {
        PyObject *key = PyTuple_Pack(5, tags[t], modules[k], packages[k], what, detail);
        if (key == NULL) {
            PyErr_Clear();
            goto out_key;
        }
        /* the memo's keys are tuples of exact str, int, bytes or None (Guard.remember): comparing them runs no foreign code */
        PyObject *hit = PyDict_GetItemWithError(memo, key);
        Py_DECREF(key);
        if (hit == NULL) {
            PyErr_Clear();
            goto out_key; /* not remembered: the Python hook decides (and remembers an allow) */
        }
        if (!PyTuple_CheckExact(hit) || PyTuple_GET_SIZE(hit) != 2 || count_type == NULL ||
            !Py_IS_TYPE(PyTuple_GET_ITEM(hit, 0), count_type) || !PyFloat_CheckExact(PyTuple_GET_ITEM(hit, 1)))
            goto out_key;
        if (!(PyFloat_AS_DOUBLE(PyTuple_GET_ITEM(hit, 1)) > now))
            goto out_key; /* expired: decided again */
        counters[ncounters++] = Py_NewRef(PyTuple_GET_ITEM(hit, 0));
    }
    for (int k = 0; k < ncounters; k++) { /* allowed: counted as the Python hook counts it */
        PyObject *r = PyIter_Next(counters[k]);
        if (r == NULL)
            PyErr_Clear();
        Py_XDECREF(r);
    }
    result = 1;
out_key:
    Py_XDECREF(what);
    Py_XDECREF(detail);
out:
    for (int k = 0; k < n; k++) {
        Py_DECREF(modules[k]);
        Py_DECREF(packages[k]);
    }
    for (int k = 0; k < ncounters; k++)
        Py_DECREF(counters[k]);
    Py_XDECREF(inner_globals);
    return result;
}

static int
polc_guard_c_hook(const char *event, PyObject *args, void *data)
{
    (void)data;
    if (!installed || event == NULL)
        return 0;
    if (probing && strcmp(event, PROBE_EVENT) == 0) {
        probe_seen = 1;
        return 0;
    }
    Slot *slot = lookup(event);
    if (slot == NULL)
        return 0;
    if (PyInterpreterState_Get() != main_interp)
        return 0; /* the guard's Python hook is the main interpreter's only */
    if (!slot->always) {
        if (slot->memo != MEMO_NONE) {
            int fast = memo_fast(slot, args);
            if (fast == 0) {
                skipped++;
                return 0;
            }
            if (fast == 1) {
                remembered++;
                return 0;
            }
        }
        else if (!needs_python()) {
            skipped++;
            return 0;
        }
    }
    dispatched++;
    PyObject *frame = (PyObject *)PyEval_GetFrame(); /* borrowed: what sys._getframe(1) is in a Python hook */
    if (frame == NULL && PyThreadState_Get()->cframe->current_frame != NULL) {
        /* there is a caller, but no memory for its frame object (PyEval_GetFrame cleared the
           error): without the frame nothing would be attributed, so the operation is refused */
        PyErr_NoMemory();
        return -1;
    }
    PyObject *stack[3] = {slot->event, args != NULL ? args : Py_None, frame != NULL ? frame : Py_None};
    PyObject *res = PyObject_Vectorcall(dispatch, stack, 3, NULL);
    if (res == NULL)
        return -1; /* a denial or a fault: the operation does not happen */
    Py_DECREF(res);
    return 0;
}

#ifdef POLC_FRAME_WALK_INTERNAL
#define MAX_FOUND 64

/* walk(frame, names, stop): Guard.attribute's walk of the stack from ``frame`` outwards (not
   past ``stop``), over the interpreter's frames; only the innermost frame of each governed
   module is made a frame object. Returns (found or None, polc_inner), or None when the Python
   walk must do it (a module name not classified yet, a frame not on this thread's stack). */
static PyObject *
walk(PyObject *self, PyObject *const *argv, Py_ssize_t argc)
{
    (void)self;
    if (argc != 3 || !PyFrame_Check(argv[0]) || !PyDict_CheckExact(argv[1])) {
        PyErr_SetString(PyExc_TypeError, "walk(frame, names: dict, stop)");
        return NULL;
    }
    if (polc_owner == NULL)
        Py_RETURN_NONE;
    PyFrameObject *frame = (PyFrameObject *)argv[0];
    PyObject *table_names = argv[1];
    if (!plain_dict(table_names))
        Py_RETURN_NONE; /* a lookup in it could run foreign code */
    PyObject *stop = argv[2];
    _PyInterpreterFrame *start = frame->f_frame;
    PyThreadState *tstate = PyThreadState_Get();
    _PyInterpreterFrame *f = tstate->cframe->current_frame;
    while (f != NULL && f != start)
        f = f->previous;
    if (f == NULL || frame->f_back != NULL)
        Py_RETURN_NONE; /* not a frame of this thread's stack: the Python walk follows f_back */
    PyObject *modules[MAX_FOUND], *packages[MAX_FOUND];
    Py_ssize_t depth[MAX_FOUND];
    int n = 0, polc_inner = 0;
    Py_ssize_t idx = 0;
    PyObject *last = NULL;
    for (; f != NULL; f = f->previous) {
        if (_PyFrame_IsIncomplete(f))
            continue;
        if (stop != Py_None && (PyObject *)f->frame_obj == stop)
            break;
        PyObject *g = f->f_globals;
        if (g != last) {
            last = g;
            if (!plain_dict(g))
                goto python; /* a lookup could run foreign code: the Python walk does it */
            PyObject *name = PyDict_GetItemWithError(g, str_name);
            if (name == NULL && PyErr_Occurred()) {
                PyErr_Clear();
                goto python;
            }
            if (name != NULL && PyUnicode_CheckExact(name)) {
                Py_INCREF(name);
                PyObject *owner = PyDict_GetItemWithError(table_names, name);
                Py_DECREF(name);
                if (owner == NULL) {
                    if (PyErr_Occurred())
                        PyErr_Clear();
                    goto python; /* not classified yet: the Python walk classifies it */
                }
                if (owner == polc_owner) {
                    if (n == 0)
                        polc_inner = 1;
                }
                else if (owner != Py_None) {
                    if (!PyTuple_CheckExact(owner) || PyTuple_GET_SIZE(owner) != 2 ||
                        !PyUnicode_CheckExact(PyTuple_GET_ITEM(owner, 0)))
                        goto python;
                    PyObject *module = PyTuple_GET_ITEM(owner, 0);
                    int seen = 0;
                    for (int k = 0; k < n; k++) {
                        int eq = PyObject_RichCompareBool(modules[k], module, Py_EQ);
                        if (eq < 0) {
                            PyErr_Clear();
                            goto python;
                        }
                        if (eq) {
                            seen = 1;
                            break;
                        }
                    }
                    if (!seen) {
                        if (n == MAX_FOUND)
                            goto python;
                        /* held from here: the table may change before they are used */
                        modules[n] = Py_NewRef(module);
                        packages[n] = Py_NewRef(PyTuple_GET_ITEM(owner, 1));
                        depth[n] = idx;
                        n++;
                    }
                }
            }
        }
        idx++;
    }
    PyObject *found = NULL, *result = NULL;
    PyFrameObject *cursor = frame;
    Py_INCREF(cursor);
    Py_ssize_t at = 0;
    if (n > 0) {
        found = PyDict_New();
        if (found == NULL)
            goto done;
        for (int k = 0; k < n; k++) {
            while (at < depth[k]) { /* the frame objects up to this one (what f_back would make) */
                PyFrameObject *back = PyFrame_GetBack(cursor);
                Py_DECREF(cursor);
                cursor = back;
                at++;
                if (cursor == NULL) { /* the stack changed under us: the Python walk decides */
                    Py_CLEAR(found);
                    if (PyErr_Occurred())
                        goto done; /* no memory for a frame object: raised (a fault: denied) */
                    result = Py_None;
                    Py_INCREF(result);
                    goto done;
                }
            }
            PyObject *entry = PyTuple_Pack(2, packages[k], (PyObject *)cursor);
            if (entry == NULL || PyDict_SetItem(found, modules[k], entry) < 0) {
                Py_XDECREF(entry);
                Py_CLEAR(found);
                goto done;
            }
            Py_DECREF(entry);
        }
    }
    result = Py_BuildValue("(OO)", found != NULL ? found : Py_None, polc_inner ? Py_True : Py_False);
done:
    Py_XDECREF(found);
    Py_XDECREF(cursor);
    for (int k = 0; k < n; k++) {
        Py_DECREF(modules[k]);
        Py_DECREF(packages[k]);
    }
    return result;
python: /* the Python walk decides: what was held goes */
    for (int k = 0; k < n; k++) {
        Py_DECREF(modules[k]);
        Py_DECREF(packages[k]);
    }
    Py_RETURN_NONE;
}
#endif

/* What install() set up, released (a failed install, or one before another). */
static void
release_state(void)
{
    for (int i = 0; i < TABLE_SIZE; i++) {
        if (table[i].name != NULL) {
            PyMem_RawFree(table[i].name);
            Py_CLEAR(table[i].event);
            table[i].name = NULL;
        }
    }
    Py_CLEAR(dispatch);
    Py_CLEAR(agent);
    Py_CLEAR(inherited);
    Py_CLEAR(polc_owner);
    Py_CLEAR(busy); /* (the memo, like the names, is set_names' and stays) */
    Py_CLEAR(stops);
    Py_CLEAR(family_descr);
    Py_CLEAR(os_dict);
    Py_CLEAR(os_environ);
    Py_CLEAR(count_type);
    Py_CLEAR(open_exempt);
}

static PyObject *
install(PyObject *self, PyObject *const *argv, Py_ssize_t argc)
{
    (void)self;
    if (argc != 6) {
        PyErr_SetString(PyExc_TypeError,
                        "install(dispatch, agent, inherited, polc_owner, events, always)");
        return NULL;
    }
    if (installed) {
        PyErr_SetString(PyExc_RuntimeError, "the guard's C hook is already installed");
        return NULL;
    }
    if (!PyCallable_Check(argv[0]) || !PyTuple_Check(argv[4]) || !PyTuple_Check(argv[5])) {
        PyErr_SetString(PyExc_TypeError, "dispatch must be callable; events and always tuples");
        return NULL;
    }
    PyObject *events = argv[4], *always = argv[5];
    Py_ssize_t n = PyTuple_GET_SIZE(events);
    if (n >= TABLE_SIZE / 2) {
        PyErr_SetString(PyExc_ValueError, "too many events");
        return NULL;
    }
    Slot fresh[TABLE_SIZE];
    memset(fresh, 0, sizeof(fresh));
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *ev = PyTuple_GET_ITEM(events, k);
        if (!PyUnicode_CheckExact(ev)) {
            PyErr_SetString(PyExc_TypeError, "event names must be str");
            goto fail;
        }
        const char *text = PyUnicode_AsUTF8(ev);
        if (text == NULL)
            goto fail;
        int is_always = PySequence_Contains(always, ev);
        if (is_always < 0)
            goto fail;
        size_t i = hash_name(text) & (TABLE_SIZE - 1);
        while (fresh[i].name != NULL) {
            if (strcmp(fresh[i].name, text) == 0) {
                PyErr_SetString(PyExc_ValueError, "an event is named twice");
                goto fail;
            }
            i = (i + 1) & (TABLE_SIZE - 1);
        }
        size_t len = strlen(text);
        char *copy = PyMem_RawMalloc(len + 1);
        if (copy == NULL) {
            PyErr_NoMemory();
            goto fail;
        }
        memcpy(copy, text, len + 1);
        Py_INCREF(ev);
        fresh[i].name = copy;
        fresh[i].event = ev;
        fresh[i].always = is_always;
    }
    if (str_name == NULL && (str_name = PyUnicode_InternFromString("__name__")) == NULL)
        goto fail;
    if (str_snapshot == NULL && (str_snapshot = PyUnicode_InternFromString("_snapshot")) == NULL)
        goto fail;
    release_state(); /* what a failed install() before this one left */
    memcpy(table, fresh, sizeof(table));
    Py_INCREF(argv[0]);
    Py_INCREF(argv[1]);
    Py_INCREF(argv[2]);
    Py_INCREF(argv[3]);
    dispatch = argv[0];
    agent = argv[1];
    inherited = argv[2];
    polc_owner = argv[3];
    main_interp = PyInterpreterState_Get();
    installed = 1;
    /* PySys_AddAuditHook returns 0 without adding the hook when an existing hook refuses
       (raises RuntimeError on sys.addaudithook): a private event tells whether it is there */
    if (!hook_added && PySys_AddAuditHook(polc_guard_c_hook, NULL) < 0)
        goto refused;
    probing = 1;
    probe_seen = 0;
    int rc = PySys_Audit(PROBE_EVENT, NULL);
    probing = 0;
    if (probe_seen) {
        hook_added = 1;
        if (rc < 0)
            PyErr_Clear(); /* a later hook refused the probe: this one is there all the same */
    }
    else if (rc < 0)
        goto refused;
    else {
        PyErr_SetString(PyExc_RuntimeError,
                        "the guard's C audit hook was not added: it did not see the probe event "
                        "(another audit hook refused sys.addaudithook)");
        goto refused;
    }
    Py_RETURN_NONE;
refused:
    installed = 0;
    release_state();
    return NULL;
fail:
    for (int i = 0; i < TABLE_SIZE; i++) {
        if (fresh[i].name != NULL) {
            PyMem_RawFree(fresh[i].name);
            Py_DECREF(fresh[i].event);
        }
    }
    return NULL;
}

static PyObject *
set_names(PyObject *self, PyObject *const *argv, Py_ssize_t argc)
{
    (void)self;
    if ((argc != 2 && argc != 3) || !PyDict_CheckExact(argv[0]) ||
        (argc == 3 && argv[2] != Py_None && !PyDict_CheckExact(argv[2]))) {
        PyErr_SetString(PyExc_TypeError, "set_names(names: dict, snapshot, memo: dict | None = None)");
        return NULL;
    }
    PyObject *old_names = names, *old_snap = names_snap, *old_memo = memo;
    Py_INCREF(argv[0]);
    Py_INCREF(argv[1]);
    names = argv[0];
    names_snap = argv[1];
    memo = argc == 3 && argv[2] != Py_None ? Py_NewRef(argv[2]) : NULL;
    generation++; /* what was remembered for the old classification no longer holds */
    Py_XDECREF(old_names);
    Py_XDECREF(old_snap);
    Py_XDECREF(old_memo);
    clear_verdicts(); /* and the globals it held (exec'd namespaces, unloaded modules) go */
    Py_RETURN_NONE;
}

/* configure_memo(kinds, family, families, busy, stops, os, count_type): which events have a
   remembered-allow fast path (kinds: event name -> 1 for an address, 2 for subprocess.Popen), and
   what it reads. After install(); set_names(..., memo) then gives each snapshot's memo. */
static PyObject *
configure_memo(PyObject *self, PyObject *const *argv, Py_ssize_t argc)
{
    (void)self;
    if (argc != 8 || !PyDict_CheckExact(argv[0]) || !PyTuple_CheckExact(argv[2]) || PyTuple_GET_SIZE(argv[2]) != 2 ||
        !PySet_CheckExact(argv[3]) || !PyDict_CheckExact(argv[4]) || !PyModule_Check(argv[5]) || !PyType_Check(argv[6]) ||
        !PyFrozenSet_CheckExact(argv[7])) {
        PyErr_SetString(PyExc_TypeError, "configure_memo(kinds: dict, family, families: (int, int), busy: set, "
                                         "stops: dict, os, count_type, open_exempt: frozenset)");
        return NULL;
    }
    if (busy != NULL) {
        /* once an install, as install() itself: a second call (a governed package importing this
           module) could name its own thread busy, and its requests would be skipped in C */
        PyErr_SetString(PyExc_RuntimeError, "the remembered-allow path is already configured");
        return NULL;
    }
    {
        Py_ssize_t pos = 0;
        PyObject *item;
        Py_hash_t hash;
        while (_PySet_NextEntry(argv[7], &pos, &item, &hash)) {
            if (!PyUnicode_CheckExact(item)) {
                PyErr_SetString(PyExc_TypeError, "open_exempt must hold str only");
                return NULL;
            }
        }
    }
    long os_flags[5];
    static const char *flag_names[5] = {"O_ACCMODE", "O_RDONLY", "O_WRONLY", "O_CREAT", "O_TRUNC"};
    for (int i = 0; i < 5; i++) {
        PyObject *v = PyObject_GetAttrString(argv[5], flag_names[i]);
        if (v == NULL)
            return NULL;
        os_flags[i] = PyLong_AsLong(v);
        Py_DECREF(v);
        if (os_flags[i] == -1 && PyErr_Occurred())
            return NULL;
    }
    PyObject *append = PyObject_GetAttrString(argv[5], "O_APPEND");
    if (append == NULL)
        return NULL;
    long o_append = PyLong_AsLong(append);
    Py_DECREF(append);
    if (o_append == -1 && PyErr_Occurred())
        return NULL;
    if (!installed) {
        PyErr_SetString(PyExc_RuntimeError, "install() the hook first");
        return NULL;
    }
    if (Py_TYPE(argv[1])->tp_descr_get == NULL) {
        PyErr_SetString(PyExc_TypeError, "family must be a descriptor");
        return NULL;
    }
    long fams[2];
    for (int i = 0; i < 2; i++) {
        PyObject *v = PyTuple_GET_ITEM(argv[2], i);
        if (!PyLong_Check(v) || ((fams[i] = PyLong_AsLong(v)) == -1 && PyErr_Occurred())) {
            PyErr_Clear();
            PyErr_SetString(PyExc_TypeError, "families must be two ints");
            return NULL;
        }
    }
    int kinds[TABLE_SIZE];
    for (int i = 0; i < TABLE_SIZE; i++)
        kinds[i] = MEMO_NONE;
    PyObject *key, *value;
    Py_ssize_t pos = 0;
    while (PyDict_Next(argv[0], &pos, &key, &value)) {
        const char *text = PyUnicode_Check(key) ? PyUnicode_AsUTF8(key) : NULL;
        long kind = PyLong_Check(value) ? PyLong_AsLong(value) : -1;
        if (text == NULL || (kind != MEMO_ADDRESS && kind != MEMO_POPEN && kind != MEMO_OPEN)) {
            PyErr_Clear();
            PyErr_SetString(PyExc_ValueError, "kinds: event name -> 1 (address), 2 (subprocess.Popen) or 3 (open)");
            return NULL;
        }
        Slot *slot = lookup(text);
        if (slot == NULL || slot->always) {
            PyErr_Format(PyExc_ValueError, "%s is not an event the hook handles on the stack", text);
            return NULL;
        }
        kinds[slot - table] = (int)kind;
    }
    PyObject *env = PyObject_GetAttrString(argv[5], "environ");
    if (env == NULL)
        return NULL;
    if (str_environ == NULL && (str_environ = PyUnicode_InternFromString("environ")) == NULL)
        goto fail;
    if (str_data == NULL && (str_data = PyUnicode_InternFromString("_data")) == NULL)
        goto fail;
    if (bytes_path == NULL && (bytes_path = PyBytes_FromString("PATH")) == NULL)
        goto fail;
    if (tag_address == NULL && (tag_address = PyUnicode_InternFromString("network.outbound")) == NULL)
        goto fail;
    if (tag_exec == NULL && (tag_exec = PyUnicode_InternFromString("process.exec")) == NULL)
        goto fail;
    if (tag_read == NULL && (tag_read = PyUnicode_InternFromString("fs.read")) == NULL)
        goto fail;
    if (tag_write == NULL && (tag_write = PyUnicode_InternFromString("fs.write")) == NULL)
        goto fail;
    PyObject *d = PyModule_GetDict(argv[5]); /* borrowed */
    Py_XSETREF(family_descr, Py_NewRef(argv[1]));
    Py_XSETREF(busy, Py_NewRef(argv[3]));
    Py_XSETREF(stops, Py_NewRef(argv[4]));
    Py_XSETREF(os_dict, Py_NewRef(d));
    Py_XSETREF(os_environ, env);
    Py_XSETREF(count_type, (PyTypeObject *)Py_NewRef(argv[6]));
    Py_XSETREF(open_exempt, Py_NewRef(argv[7]));
    o_accmode = os_flags[0];
    o_rdonly = os_flags[1];
    o_wronly = os_flags[2];
    o_write_flags = os_flags[3] | os_flags[4] | o_append;
    inet_families[0] = fams[0];
    inet_families[1] = fams[1];
    for (int i = 0; i < TABLE_SIZE; i++)
        if (table[i].name != NULL)
            table[i].memo = kinds[i];
    Py_RETURN_NONE;
fail:
    Py_DECREF(env);
    return NULL;
}

static PyObject *
bump(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    generation++; /* the table changed in place: no verdict remembered before holds */
    Py_RETURN_NONE;
}

static PyObject *
stats(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    return Py_BuildValue("{s:K,s:K,s:K,s:O}", "skipped", skipped, "dispatched", dispatched, "remembered",
                         remembered, "installed", installed ? Py_True : Py_False);
}

/* os.environ's item reads under the guard (wrappers._environment): environ_method() makes the
   __getitem__ of its guarded class. A read by a thread inside the guard's own work, a read the
   standard library's exemptions let through (asked of the first caller whose module is not one of
   env_pass: os and the mapping code), or one with nothing governed on the stack (as
   needs_python() == 0) goes straight to the base class's __getitem__; anything else to env_checked,
   the Python check, which decides first and then reads. */
static PyObject *env_base = NULL;    /* os._Environ.__getitem__ */
static PyObject *env_checked = NULL; /* checked(self, key): the Python check, then the read */
static PyObject *env_pass = NULL;    /* frozenset of the module names walked past */
static PyObject *env_exempt = NULL;  /* module name -> None (any name) or frozenset of names */
static PyObject *env_within = NULL;  /* module name -> frozenset of the function names it holds in */

/* 1: globals is the namespace of the module sys.modules holds as name (not code run with a forged
   __name__); 0: not, or cannot be told without running foreign code. Never leaves an exception set. */
static int
own_namespace(PyObject *name, PyObject *globals)
{
    PyObject *modules = PyImport_GetModuleDict(); /* borrowed */
    if (!plain_dict(modules))
        return 0;
    PyObject *module = PyDict_GetItemWithError(modules, name); /* borrowed */
    if (module == NULL) {
        PyErr_Clear();
        return 0;
    }
    return PyModule_CheckExact(module) && PyModule_GetDict(module) == globals;
}

/* 1: the read needs no check; 0: the Python check decides. Never leaves an exception set. */
static int
env_read_unchecked(PyObject *key)
{
    if (!installed || PyInterpreterState_Get() != main_interp || env_pass == NULL)
        return 0;
    PyObject *tid = PyLong_FromUnsignedLong(PyThread_get_thread_ident());
    if (tid == NULL) {
        PyErr_Clear();
        return 0;
    }
    int inside = busy != NULL && PySet_CheckExact(busy) ? PySet_Contains(busy, tid) : -1;
    Py_DECREF(tid);
    if (inside != 0) {
        if (inside < 0) {
            PyErr_Clear();
            return 0;
        }
        return 1; /* the guard's own work reads unchecked (as the Python __getitem__) */
    }
#ifdef POLC_FRAME_WALK_INTERNAL
    PyThreadState *tstate = PyThreadState_Get();
    _PyInterpreterFrame *f = tstate->cframe->current_frame;
    PyObject *name = NULL, *g = NULL;
    for (; f != NULL; f = f->previous) {
        if (_PyFrame_IsIncomplete(f))
            continue;
        g = f->f_globals;
        if (!plain_dict(g))
            return 0; /* a lookup could run foreign code */
        name = PyDict_GetItemWithError(g, str_name); /* borrowed; exact str keys: no foreign code */
        if (name == NULL || !PyUnicode_CheckExact(name))
            break;
        int through = PySet_Contains(env_pass, name); /* a frozenset of str, an exact str */
        if (through < 0) {
            PyErr_Clear();
            return 0;
        }
        if (!through)
            break;
    }
    if (f != NULL && name != NULL && PyUnicode_CheckExact(name)) {
        PyObject *exempt = PyDict_GetItemWithError(env_exempt, name); /* borrowed; str keys only */
        if (exempt != NULL && !own_namespace(name, g))
            exempt = NULL; /* a forged __name__ (exec(code, {"__name__": ...})): no exemption */
        if (exempt != NULL) {
            PyObject *within = PyDict_GetItemWithError(env_within, name); /* borrowed; str keys only */
            /* a frozenset of str, the code's name an exact str: no foreign code */
            if (within != NULL && PySet_Contains(within, f->f_code->co_name) != 1)
                exempt = NULL; /* not in the functions the exemption is for */
        }
        if (exempt == Py_None)
            return 1;
        if (exempt != NULL && PyFrozenSet_CheckExact(exempt)) {
            PyObject *text = NULL;
            if (PyUnicode_CheckExact(key))
                text = Py_NewRef(key);
            else if (PyBytes_CheckExact(key)) /* os.environb's keys, and os.get_exec_path's b"PATH" probe */
                text = PyUnicode_DecodeFSDefaultAndSize(PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key));
            if (text != NULL) {
                int in = PySet_Contains(exempt, text);
                Py_DECREF(text);
                if (in > 0)
                    return 1;
            }
        }
        PyErr_Clear();
    }
#endif
    return needs_python() ? 0 : 1;
}

static PyObject *
env_getitem(PyObject *self, PyObject *key)
{
    PyObject *fn = env_read_unchecked(key) ? env_base : env_checked;
    PyObject *argv[2] = {self, key};
    Py_INCREF(fn); /* the call may run code that configures again */
    PyObject *result = PyObject_Vectorcall(fn, argv, 2, NULL);
    Py_DECREF(fn);
    return result;
}

static PyMethodDef env_getitem_def = {
    "__getitem__", env_getitem, METH_O, "os.environ's item read, checked as an env.read request (polc's guard)",
};

/* environ_method(cls, base_getitem, checked, pass_through, exempt, within): the __getitem__ for cls. */
static PyObject *
environ_method(PyObject *self, PyObject *const *argv, Py_ssize_t argc)
{
    (void)self;
    if (argc != 6 || !PyType_Check(argv[0]) || !PyCallable_Check(argv[1]) || !PyCallable_Check(argv[2]) ||
        !PyFrozenSet_CheckExact(argv[3]) || !plain_dict(argv[4]) || !plain_dict(argv[5])) {
        PyErr_SetString(PyExc_TypeError, "environ_method(cls, base_getitem, checked, pass_through: frozenset, "
                                         "exempt: dict of str, within: dict of str)");
        return NULL;
    }
    Py_ssize_t pos = 0;
    PyObject *item, *value;
    Py_hash_t hash;
    while (_PySet_NextEntry(argv[3], &pos, &item, &hash)) {
        if (!PyUnicode_CheckExact(item)) {
            PyErr_SetString(PyExc_TypeError, "pass_through must hold str only");
            return NULL;
        }
    }
    pos = 0;
    while (PyDict_Next(argv[4], &pos, &item, &value)) {
        int ok = value == Py_None;
        if (PyFrozenSet_CheckExact(value)) {
            ok = 1;
            Py_ssize_t p = 0;
            PyObject *name;
            while (_PySet_NextEntry(value, &p, &name, &hash))
                ok = ok && PyUnicode_CheckExact(name);
        }
        if (!ok) {
            PyErr_SetString(PyExc_TypeError, "exempt: module name -> None or a frozenset of str");
            return NULL;
        }
    }
    pos = 0;
    while (PyDict_Next(argv[5], &pos, &item, &value)) {
        int ok = PyFrozenSet_CheckExact(value);
        Py_ssize_t p = 0;
        PyObject *name;
        while (ok && _PySet_NextEntry(value, &p, &name, &hash))
            ok = PyUnicode_CheckExact(name);
        if (!ok) {
            PyErr_SetString(PyExc_TypeError, "within: module name -> a frozenset of str");
            return NULL;
        }
    }
    if (str_name == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "install() the hook first");
        return NULL;
    }
    if (env_base != NULL) {
        /* once, as install(): a second call (a governed package importing this module) would
           replace the check every read of the installed method calls */
        PyErr_SetString(PyExc_RuntimeError, "os.environ's guarded method is already made");
        return NULL;
    }
    PyObject *descr = PyDescr_NewMethod((PyTypeObject *)argv[0], &env_getitem_def);
    if (descr == NULL)
        return NULL;
    PyObject *exempt = PyDict_Copy(argv[4]), *within = PyDict_Copy(argv[5]);
    if (exempt == NULL || within == NULL) {
        Py_XDECREF(exempt);
        Py_XDECREF(within);
        Py_DECREF(descr);
        return NULL;
    }
    env_exempt = exempt;
    env_within = within;
    env_checked = Py_NewRef(argv[2]);
    env_pass = Py_NewRef(argv[3]);
    env_base = Py_NewRef(argv[1]); /* last: it marks the method made */
    return descr;
}

static PyMethodDef methods[] = {
    {"install", (PyCFunction)(void (*)(void))install, METH_FASTCALL,
     "install(dispatch, agent, inherited, polc_owner, events, always): register the C audit hook"},
    {"set_names", (PyCFunction)(void (*)(void))set_names, METH_FASTCALL,
     "set_names(names, snapshot, memo=None): the classification of module names, and the remembered allows, of one snapshot"},
    {"configure_memo", (PyCFunction)(void (*)(void))configure_memo, METH_FASTCALL,
     "configure_memo(kinds, family, families, busy, stops, os, count_type, open_exempt): the remembered-allow fast path"},
#ifdef POLC_FRAME_WALK_INTERNAL
    {"walk", (PyCFunction)(void (*)(void))walk, METH_FASTCALL,
     "walk(frame, names, stop): the attribution walk of Guard.attribute, or None to walk in Python"},
#endif
    {"environ_method", (PyCFunction)(void (*)(void))environ_method, METH_FASTCALL,
     "environ_method(cls, base_getitem, checked, pass_through, exempt, within): os.environ's guarded __getitem__"},
    {"bump", bump, METH_NOARGS, "bump(): the names table changed in place; forget the verdicts"},
    {"stats", stats, METH_NOARGS, "how many handled events were skipped in C, allowed as remembered in C, and passed to Python"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "polc.runtime.guard._hook",
    "The guard's audit hook in C (runtime/guard/_hook.c).", -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__hook(void)
{
    if ((Py_Version >> 16) != (PY_VERSION_HEX >> 16)) {
        PyErr_Format(PyExc_ImportError,
                     "polc.runtime.guard._hook was built for Python %d.%d, not this one (%lu.%lu)",
                     PY_MAJOR_VERSION, PY_MINOR_VERSION, Py_Version >> 24, (Py_Version >> 16) & 0xff);
        return NULL;
    }
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
#ifdef POLC_FRAME_WALK_INTERNAL
    if (PyModule_AddStringConstant(m, "frame_walk", "internal") < 0) {
#else
    if (PyModule_AddStringConstant(m, "frame_walk", "public") < 0) {
#endif
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
