/* polc.runtime.enforce._accel: the hot path of Snapshot.check in C (optional).
 *
 * Two callable types, both built by the Python side over data it prepared:
 *
 *   Decider  the fused decider of one plan: the C rendering of the Python source
 *            that deciders.write_decider generates for the plan's shape. Same
 *            normalisation (the normalisation memos probed with exact str keys, the
 *            Python normalisers called on a miss and for every other value), same
 *            buckets probed in the same order, the rule checks (Python matchers)
 *            called the same way, the same memoised Decision objects returned. The
 *            rare paths (wrong arity, invalid argument, first use of a rule's
 *            Decision) call the plan's own Python methods.
 *
 *   Checker  Snapshot.check for one snapshot: the decision cache probe, the plan
 *            lookup by (module, capability), the decider call and the audit log,
 *            exactly as the Python method orders them; a miss, and any exception
 *            (an Exception: unhashable or hostile input, a fault), goes to the
 *            snapshot's Python _miss, which decides without the fast path or
 *            denies with the reason. Nothing here ever allows on its own: an
 *            allow is always a Decision object the Python linker made.
 *
 * The pure-Python path is the reference (tests/runtime/enforce/test_enforce_accel.py
 * compares the two with hypothesis); POLC_ACCEL=0 turns this module off.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <structmember.h> /* T_OBJECT_EX: the type of a __slots__ member */

/* Parameter type codes (accel.py passes them; catalog's names). */
enum { PT_HOST = 0, PT_PORT = 1, PT_PATH = 2, PT_STRING = 3, PT_INT = 4, PT_COMMAND = 5 };
/* Index kinds (index.py). */
enum { K_SCAN = 0, K_HOST = 1, K_KEY = 2, K_PATH = 3, K_COMMAND = 4 };

#define MAX_PARAMS 16

/* Process-wide state set once by configure(): the memo dicts and the normalisers. */
static PyObject *g_host_memo, *g_path_memo, *g_suffixes_memo, *g_segments_memo;
static PyObject *g_norm_host, *g_norm_path, *g_norm_port, *g_norm_string, *g_norm_int, *g_norm_command;
static PyObject *g_suffixes, *g_segment_prefixes;
static long long g_port_min = 0, g_port_max = 65535;
static long long g_big = (1LL << 62);
static int g_configured = 0;

static PyObject *s_wrong_arity, *s_bad_argument, *s_ranked_decision, *s_audit;

/* Matchers recognised by their code object (matchers.py's closures, patterns.py's regex
 * closure): their test is done here on exact str values, exactly as their Python body
 * reads; any other value, or a closure whose cells hold something unexpected, calls the
 * function itself. configure() gives each code object and the indices of its cells. */
enum {
    M_EQ = 0,
    M_SAME,
    M_UNDER,
    M_CONTAINS,
    M_STARTS,
    M_ENDS,
    M_ONE_LABEL,
    M_SOME_LABELS,
    M_FULLMATCH,
    M_SEGMENTS_IN,
    M_SEGMENTS_END,
    M_KINDS
};
static const char *matcher_names[M_KINDS] = {"eq",          "same",      "under",        "contains",
                                              "starts",      "ends",      "one_label",    "some_labels",
                                              "fullmatch",   "segments_in", "segments_end"};
#define MAX_CELLS 4
static PyObject *g_codes[M_KINDS];
static Py_ssize_t g_cells[M_KINDS][MAX_CELLS];
static PyObject *g_true_fn;

/* The slot of Decision.audit (a __slots__ member) for a direct read; -1: read it by name. */
static PyTypeObject *g_decision_type;
static Py_ssize_t g_audit_offset = -1;

/* ------------------------------------------------------------------------ */
/* Decider */

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    int kind;
    int pos;
    int ipos;
    Py_ssize_t arity;
    Py_ssize_t ntypes;
    unsigned char types[MAX_PARAMS];
    PyObject *plan;
    PyObject *no_ent;
    PyObject *decisions; /* dict */
    PyObject *exact;     /* dict or NULL */
    PyObject *wild1;     /* dict or NULL */
    PyObject *wildn;     /* dict or NULL */
    PyObject *pfx;       /* dict or NULL */
    PyObject *ip;        /* tuple or NULL */
    PyObject *rest;      /* tuple or NULL */
    PyObject *commands;  /* K_COMMAND: the plan's command index (patterns.command_index), else NULL */
    Py_ssize_t ndepths;
    Py_ssize_t *depths;
    Py_ssize_t npfx;
    Py_ssize_t *pfx_lens;
} DeciderObject;

static PyTypeObject DeciderType;

/* The scan state of one decision. */
typedef struct {
    long long best;
    PyObject *best_obj; /* a strong reference to the rank object of the best entry, or NULL */
    PyObject **vals;
    int ipos;
} Scan;

/* Is lo <= v <= hi (Python's chained comparison)? 1, 0, or -1 with an exception. */
static int
in_range(PyObject *lo, PyObject *v, PyObject *hi)
{
    if (PyLong_CheckExact(lo) && PyLong_CheckExact(v) && PyLong_CheckExact(hi)) {
        int o1 = 0, o2 = 0, o3 = 0;
        long long a = PyLong_AsLongLongAndOverflow(lo, &o1);
        long long b = PyLong_AsLongLongAndOverflow(v, &o2);
        long long c = PyLong_AsLongLongAndOverflow(hi, &o3);
        if (!o1 && !o2 && !o3) {
            if (a == -1 || b == -1 || c == -1) {
                if (PyErr_Occurred())
                    return -1;
            }
            return a <= b && b <= c;
        }
    }
    int r = PyObject_RichCompareBool(lo, v, Py_LE);
    if (r <= 0)
        return r;
    return PyObject_RichCompareBool(v, hi, Py_LE);
}

/* fn(arg), holding a strong reference to fn across the call: fn may be borrowed from a
 * closure cell or a module global that Python code run by the call (a signal handler, a
 * __hash__, configure()) could rebind, which would free fn while it runs. */
static PyObject *
call_held(PyObject *fn, PyObject *arg)
{
    Py_INCREF(fn);
    PyObject *r = PyObject_CallOneArg(fn, arg);
    Py_DECREF(fn);
    return r;
}

/* The contents of cell ``which`` of a recognised closure fn, if it is an exact str (else NULL). */
static PyObject *
cell_str(PyObject *fn, int kind, int which)
{
    PyObject *closure = PyFunction_GET_CLOSURE(fn);
    Py_ssize_t i = g_cells[kind][which];
    if (closure == NULL || !PyTuple_Check(closure) || i < 0 || i >= PyTuple_GET_SIZE(closure))
        return NULL;
    PyObject *cell = PyTuple_GET_ITEM(closure, i);
    if (!PyCell_Check(cell))
        return NULL;
    PyObject *v = PyCell_GET(cell);
    return v != NULL && PyUnicode_CheckExact(v) ? v : NULL;
}

static PyObject *
cell_obj(PyObject *fn, int kind, int which)
{
    PyObject *closure = PyFunction_GET_CLOSURE(fn);
    Py_ssize_t i = g_cells[kind][which];
    if (closure == NULL || !PyTuple_Check(closure) || i < 0 || i >= PyTuple_GET_SIZE(closure))
        return NULL;
    PyObject *cell = PyTuple_GET_ITEM(closure, i);
    return PyCell_Check(cell) ? PyCell_GET(cell) : NULL;
}

/* One rule check: does matcher fn accept the normalised value v? 1, 0, or -1 with an exception. */
static int
run_check(PyObject *fn, PyObject *v)
{
    if (fn == g_true_fn)
        return 1; /* matchers._true */
    if (PyFunction_Check(fn)) {
        PyObject *code = PyFunction_GET_CODE(fn);
        int kind = -1;
        for (int k = 0; k < M_KINDS; k++) {
            if (code == g_codes[k]) {
                kind = k;
                break;
            }
        }
        if (kind >= 0) {
            int is_str = PyUnicode_CheckExact(v);
            PyObject *a, *b;
            switch (kind) {
            case M_EQ:
            case M_SAME: /* v == c */
                a = cell_str(fn, kind, 0);
                if (a != NULL && is_str)
                    return PyUnicode_Compare(v, a) == 0;
                break;
            case M_UNDER: /* v == prefix or v.startswith(slash) */
                a = cell_str(fn, kind, 0);
                b = cell_str(fn, kind, 1);
                if (a != NULL && b != NULL && is_str)
                    return PyUnicode_Compare(v, a) == 0 || PyUnicode_Tailmatch(v, b, 0, PY_SSIZE_T_MAX, -1) == 1;
                break;
            case M_CONTAINS: /* core in v */
                a = cell_str(fn, kind, 0);
                if (a != NULL && is_str)
                    return PyUnicode_Contains(v, a);
                break;
            case M_STARTS:
            case M_ENDS: /* v.startswith(core) / v.endswith(core) */
                a = cell_str(fn, kind, 0);
                if (a != NULL && is_str)
                    return (int)PyUnicode_Tailmatch(v, a, 0, PY_SSIZE_T_MAX, kind == M_STARTS ? -1 : 1);
                break;
            case M_ONE_LABEL:
            case M_SOME_LABELS: {
                /* one_label:   type(v) is str and v.endswith(parent) and len(v) > n
                 *              and v.find(".", 0, len(v) - n) < 0
                 * some_labels: type(v) is str and len(v) > n and v.endswith(parent) */
                a = cell_str(fn, kind, 0);
                PyObject *nobj = cell_obj(fn, kind, 1);
                if (a == NULL || nobj == NULL || !PyLong_CheckExact(nobj))
                    break;
                Py_ssize_t n = PyLong_AsSsize_t(nobj);
                if (n < 0) {
                    PyErr_Clear();
                    break;
                }
                if (!is_str)
                    return 0;
                Py_ssize_t len = PyUnicode_GET_LENGTH(v);
                if (len <= n)
                    return 0;
                Py_ssize_t ends = PyUnicode_Tailmatch(v, a, 0, PY_SSIZE_T_MAX, 1);
                if (ends != 1)
                    return ends < 0 ? -1 : 0;
                if (kind == M_SOME_LABELS)
                    return 1;
                Py_ssize_t dot = PyUnicode_FindChar(v, '.', 0, len - n, 1);
                return dot == -2 ? -1 : dot < 0;
            }
            case M_SEGMENTS_IN: {
                /* v == lit or v.startswith(head) or v.endswith(tail) or inner in v */
                PyObject *lit = cell_str(fn, kind, 0), *head = cell_str(fn, kind, 1);
                PyObject *tail = cell_str(fn, kind, 2), *inner = cell_str(fn, kind, 3);
                if (lit == NULL || head == NULL || tail == NULL || inner == NULL || !is_str)
                    break;
                if (PyUnicode_Compare(v, lit) == 0)
                    return 1;
                Py_ssize_t r = PyUnicode_Tailmatch(v, head, 0, PY_SSIZE_T_MAX, -1);
                if (r != 0)
                    return r < 0 ? -1 : 1;
                r = PyUnicode_Tailmatch(v, tail, 0, PY_SSIZE_T_MAX, 1);
                if (r != 0)
                    return r < 0 ? -1 : 1;
                return PyUnicode_Contains(v, inner);
            }
            case M_SEGMENTS_END: {
                /* v == lit or v.endswith(tail) */
                PyObject *lit = cell_str(fn, kind, 0), *tail = cell_str(fn, kind, 1);
                if (lit == NULL || tail == NULL || !is_str)
                    break;
                if (PyUnicode_Compare(v, lit) == 0)
                    return 1;
                return (int)PyUnicode_Tailmatch(v, tail, 0, PY_SSIZE_T_MAX, 1);
            }
            case M_FULLMATCH: { /* fullmatch(value) is not None: the compiled pattern's own method */
                PyObject *m = cell_obj(fn, kind, 0);
                if (m == NULL || !PyCFunction_Check(m) || !is_str)
                    break;
                PyObject *r = call_held(m, v); /* m is borrowed from the cell */
                if (r == NULL)
                    return -1;
                int found = r != Py_None;
                Py_DECREF(r);
                return found;
            }
            }
        }
    }
    PyObject *res = PyObject_CallOneArg(fn, v);
    if (res == NULL)
        return -1;
    int t = PyObject_IsTrue(res);
    Py_DECREF(res);
    return t;
}

/* Scan one bucket (entries in rank order) for a matching rank below s->best.
 * 0 on success, -1 with an exception. */
static int
scan_bucket(Scan *s, PyObject *bucket)
{
    if (!PyTuple_Check(bucket)) {
        PyErr_SetString(PyExc_TypeError, "polc accel: a bucket is not a tuple");
        return -1;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(bucket);
    int ranged = s->ipos >= 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *e = PyTuple_GET_ITEM(bucket, i);
        if (!PyTuple_Check(e) || PyTuple_GET_SIZE(e) != (ranged ? 4 : 2)) {
            PyErr_SetString(PyExc_TypeError, "polc accel: a bucket entry has the wrong shape");
            return -1;
        }
        PyObject *r = PyTuple_GET_ITEM(e, 0);
        int overflow = 0;
        long long rv = PyLong_Check(r) ? PyLong_AsLongLongAndOverflow(r, &overflow) : -1;
        if (!PyLong_Check(r) || overflow || rv < 0) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_TypeError, "polc accel: a rank is not a small int");
            return -1;
        }
        if (rv >= s->best)
            break;
        PyObject *checks;
        if (ranged) {
            int ok = in_range(PyTuple_GET_ITEM(e, 1), s->vals[s->ipos], PyTuple_GET_ITEM(e, 2));
            if (ok < 0)
                return -1;
            if (!ok)
                continue;
            checks = PyTuple_GET_ITEM(e, 3);
        }
        else {
            checks = PyTuple_GET_ITEM(e, 1);
        }
        if (!PyTuple_Check(checks)) {
            PyErr_SetString(PyExc_TypeError, "polc accel: rule checks are not a tuple");
            return -1;
        }
        Py_ssize_t nc = PyTuple_GET_SIZE(checks);
        int matched = 1;
        for (Py_ssize_t j = 0; j < nc; j++) {
            PyObject *c = PyTuple_GET_ITEM(checks, j);
            if (!PyTuple_Check(c) || PyTuple_GET_SIZE(c) != 2 || !PyLong_CheckExact(PyTuple_GET_ITEM(c, 0))) {
                PyErr_SetString(PyExc_TypeError, "polc accel: a rule check has the wrong shape");
                return -1;
            }
            Py_ssize_t p = PyLong_AsSsize_t(PyTuple_GET_ITEM(c, 0));
            if (p < 0 || p >= MAX_PARAMS || s->vals[p] == NULL) {
                if (!PyErr_Occurred())
                    PyErr_SetString(PyExc_IndexError, "polc accel: a rule check's position is out of range");
                return -1;
            }
            int t = run_check(PyTuple_GET_ITEM(c, 1), s->vals[p]);
            if (t < 0)
                return -1;
            if (!t) {
                matched = 0;
                break;
            }
        }
        if (matched) {
            s->best = rv;
            Py_INCREF(r);
            Py_XSETREF(s->best_obj, r);
            break;
        }
    }
    return 0;
}

/* Probe dict d with key and scan the bucket found. 0 / -1. */
static int
probe(Scan *s, PyObject *d, PyObject *key)
{
    PyObject *b = PyDict_GetItemWithError(d, key);
    if (b == NULL)
        return PyErr_Occurred() ? -1 : 0;
    Py_INCREF(b);
    int r = scan_bucket(s, b);
    Py_DECREF(b);
    return r;
}

/* A memo probe (exact str keys only) then the function on a miss: a new reference or NULL. */
static PyObject *
memo_or_call(PyObject *memo, PyObject *fn, PyObject *key)
{
    PyObject *v = PyDict_GetItemWithError(memo, key);
    if (v != NULL) {
        Py_INCREF(v);
        return v;
    }
    if (PyErr_Occurred())
        return NULL;
    return call_held(fn, key);
}

/* plan.<name>(args): a new reference or NULL. */
static PyObject *
plan_method(DeciderObject *self, PyObject *name, PyObject *arg)
{
    return PyObject_CallMethodOneArg(self->plan, name, arg);
}

/* Normalise argument i into *out (a new reference). 1: done; 0: the value is invalid
 * (an Exception was raised and cleared: the caller answers plan._bad_argument);
 * -1: a BaseException that is no Exception (propagated). */
static int
normalize_arg(DeciderObject *self, int typ, PyObject *a, PyObject **out)
{
    PyObject *v = NULL;
    switch (typ) {
    case PT_HOST:
        v = PyUnicode_CheckExact(a) ? memo_or_call(g_host_memo, g_norm_host, a) : call_held(g_norm_host, a);
        break;
    case PT_PATH:
        v = PyUnicode_CheckExact(a) ? memo_or_call(g_path_memo, g_norm_path, a) : call_held(g_norm_path, a);
        break;
    case PT_PORT:
        if (PyLong_CheckExact(a)) {
            int overflow = 0;
            long long x = PyLong_AsLongLongAndOverflow(a, &overflow);
            if (!overflow && !(x == -1 && PyErr_Occurred()) && g_port_min <= x && x <= g_port_max) {
                Py_INCREF(a);
                v = a;
                break;
            }
            PyErr_Clear();
        }
        v = call_held(g_norm_port, a);
        break;
    case PT_STRING:
        if (PyUnicode_CheckExact(a)) {
            Py_INCREF(a);
            v = a;
        }
        else {
            v = call_held(g_norm_string, a);
        }
        break;
    case PT_INT:
        if (PyLong_CheckExact(a)) {
            Py_INCREF(a);
            v = a;
        }
        else {
            v = call_held(g_norm_int, a);
        }
        break;
    case PT_COMMAND:
        v = call_held(g_norm_command, a);
        break;
    default:
        PyErr_SetString(PyExc_ValueError, "polc accel: unknown parameter type");
        break;
    }
    if (v != NULL) {
        *out = v;
        return 1;
    }
    if (PyErr_ExceptionMatches(PyExc_Exception)) {
        PyErr_Clear();
        return 0;
    }
    return -1;
}

/* The decision for args (a tuple): a new reference, or NULL with an exception. */
static PyObject *
decide(DeciderObject *self, PyObject *args)
{
    if (self->plan == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "polc accel: decider used after it was cleared");
        return NULL;
    }
    if (!PyTuple_Check(args)) {
        PyErr_SetString(PyExc_TypeError, "polc accel: the arguments are not a tuple");
        return NULL;
    }
    if (PyTuple_GET_SIZE(args) != self->arity)
        return plan_method(self, s_wrong_arity, args);
    PyObject *vals[MAX_PARAMS] = {NULL};
    PyObject *result = NULL;
    Py_ssize_t nt = self->ntypes;
    Scan s = {g_big, NULL, vals, self->ipos};
    for (Py_ssize_t i = 0; i < nt; i++) {
        if (self->kind == K_COMMAND && i == self->pos)
            continue; /* normalised by the command index itself */
        int r = normalize_arg(self, self->types[i], PyTuple_GET_ITEM(args, i), &vals[i]);
        if (r <= 0) {
            if (r == 0)
                result = plan_method(self, s_bad_argument, args);
            goto done;
        }
    }
    if (self->kind == K_COMMAND) {
        /* commands(raw command): normalises it (an Exception: invalid, as from norm_command)
         * and returns the smallest matching rank as an int (g_big: none) */
        PyObject *r = call_held(self->commands, PyTuple_GET_ITEM(args, self->pos));
        if (r == NULL) {
            if (PyErr_ExceptionMatches(PyExc_Exception)) {
                PyErr_Clear();
                result = plan_method(self, s_bad_argument, args);
            }
            goto done;
        }
        int overflow = 0;
        long long rv = PyLong_CheckExact(r) ? PyLong_AsLongLongAndOverflow(r, &overflow) : -1;
        if (!PyLong_CheckExact(r) || overflow || rv < 0) {
            Py_DECREF(r);
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_TypeError, "polc accel: a command index returned no rank");
            goto done;
        }
        if (rv < s.best) {
            s.best = rv;
            s.best_obj = r; /* the reference is the scan's */
        }
        else {
            Py_DECREF(r);
        }
    }
    PyObject *k = self->kind != K_SCAN && self->kind != K_COMMAND ? vals[self->pos] : NULL;
    if (self->kind == K_HOST) {
        if (PyUnicode_CheckExact(k)) {
            if (self->exact && probe(&s, self->exact, k) < 0)
                goto done;
            if (self->wild1 || self->ndepths) {
                PyObject *sfx = memo_or_call(g_suffixes_memo, g_suffixes, k);
                if (sfx == NULL)
                    goto done;
                if (!PyTuple_Check(sfx)) {
                    Py_DECREF(sfx);
                    PyErr_SetString(PyExc_TypeError, "polc accel: suffixes are not a tuple");
                    goto done;
                }
                Py_ssize_t n = PyTuple_GET_SIZE(sfx);
                int bad = 0;
                if (n > 0) {
                    if (self->wild1 && probe(&s, self->wild1, PyTuple_GET_ITEM(sfx, 0)) < 0)
                        bad = 1;
                    for (Py_ssize_t j = 0; !bad && j < self->ndepths; j++) {
                        Py_ssize_t depth = self->depths[j];
                        if (depth > n)
                            break;
                        if (probe(&s, self->wildn, PyTuple_GET_ITEM(sfx, n - depth)) < 0)
                            bad = 1;
                    }
                }
                Py_DECREF(sfx);
                if (bad)
                    goto done;
            }
        }
        else if (self->ip && scan_bucket(&s, self->ip) < 0) {
            goto done;
        }
    }
    else if (self->kind == K_PATH) {
        if (!PyUnicode_Check(k)) {
            PyErr_SetString(PyExc_TypeError, "polc accel: a normalised path is not a str");
            goto done;
        }
        Py_ssize_t len = PyUnicode_GET_LENGTH(k);
        if (self->exact) {
            Py_ssize_t slash = PyUnicode_FindChar(k, '/', 0, len, -1);
            if (slash == -2)
                goto done;
            PyObject *last = PyUnicode_Substring(k, slash + 1, len);
            if (last == NULL)
                goto done;
            int r = probe(&s, self->exact, last);
            Py_DECREF(last);
            if (r < 0)
                goto done;
        }
        if (self->ndepths) {
            PyObject *pre = memo_or_call(g_segments_memo, g_segment_prefixes, k);
            if (pre == NULL)
                goto done;
            if (!PyTuple_Check(pre)) {
                Py_DECREF(pre);
                PyErr_SetString(PyExc_TypeError, "polc accel: segment prefixes are not a tuple");
                goto done;
            }
            Py_ssize_t n = PyTuple_GET_SIZE(pre);
            int bad = 0;
            for (Py_ssize_t j = 0; j < self->ndepths; j++) {
                Py_ssize_t depth = self->depths[j];
                if (depth > n)
                    break;
                if (probe(&s, self->wildn, PyTuple_GET_ITEM(pre, depth - 1)) < 0) {
                    bad = 1;
                    break;
                }
            }
            Py_DECREF(pre);
            if (bad)
                goto done;
        }
    }
    else if (self->kind == K_KEY) {
        if (self->exact && probe(&s, self->exact, k) < 0)
            goto done;
        if (self->npfx && PyUnicode_CheckExact(k)) {
            Py_ssize_t len = PyUnicode_GET_LENGTH(k);
            for (Py_ssize_t j = 0; j < self->npfx; j++) {
                Py_ssize_t n = self->pfx_lens[j];
                if (n > len)
                    break;
                PyObject *head = PyUnicode_Substring(k, 0, n);
                if (head == NULL)
                    goto done;
                int r = probe(&s, self->pfx, head);
                Py_DECREF(head);
                if (r < 0)
                    goto done;
            }
        }
    }
    if (self->rest && scan_bucket(&s, self->rest) < 0)
        goto done;
    if (s.best_obj == NULL) {
        Py_INCREF(self->no_ent);
        result = self->no_ent;
        goto done;
    }
    {
        PyObject *best = s.best_obj;
        PyObject *d = PyDict_GetItemWithError(self->decisions, best);
        if (d != NULL) {
            Py_INCREF(d);
            result = d;
        }
        else if (!PyErr_Occurred()) {
            result = plan_method(self, s_ranked_decision, best);
        }
    }
done:
    Py_XDECREF(s.best_obj);
    for (Py_ssize_t i = 0; i < nt; i++)
        Py_XDECREF(vals[i]);
    return result;
}

static PyObject *
Decider_vectorcall(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t n = PyVectorcall_NARGS(nargsf);
    if (n != 1 || (kwnames && PyTuple_GET_SIZE(kwnames))) {
        PyErr_SetString(PyExc_TypeError, "a decider takes one argument, the request's arguments");
        return NULL;
    }
    return decide((DeciderObject *)self, args[0]);
}

static int
dict_or_null(PyObject *v, PyObject **slot, const char *what)
{
    if (v == Py_None || (PyDict_Check(v) && PyDict_GET_SIZE(v) == 0)) {
        *slot = NULL;
        return 0;
    }
    if (!PyDict_Check(v)) {
        PyErr_Format(PyExc_TypeError, "%s must be a dict", what);
        return -1;
    }
    Py_INCREF(v);
    *slot = v;
    return 0;
}

static int
tuple_or_null(PyObject *v, PyObject **slot, const char *what)
{
    if (v == Py_None || (PyTuple_Check(v) && PyTuple_GET_SIZE(v) == 0)) {
        *slot = NULL;
        return 0;
    }
    if (!PyTuple_Check(v)) {
        PyErr_Format(PyExc_TypeError, "%s must be a tuple", what);
        return -1;
    }
    Py_INCREF(v);
    *slot = v;
    return 0;
}

static int
sizes(PyObject *v, Py_ssize_t **arr, Py_ssize_t *n, const char *what)
{
    if (!PyTuple_Check(v)) {
        PyErr_Format(PyExc_TypeError, "%s must be a tuple", what);
        return -1;
    }
    Py_ssize_t m = PyTuple_GET_SIZE(v);
    *n = 0;
    *arr = NULL;
    if (m == 0)
        return 0;
    *arr = PyMem_Malloc(sizeof(Py_ssize_t) * m);
    if (*arr == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < m; i++) {
        Py_ssize_t x = PyLong_AsSsize_t(PyTuple_GET_ITEM(v, i));
        if (x == -1 && PyErr_Occurred())
            return -1;
        if (x < 1) {
            PyErr_Format(PyExc_ValueError, "%s must hold positive ints", what);
            return -1;
        }
        (*arr)[i] = x;
    }
    *n = m;
    return 0;
}

static PyObject *
Decider_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    static char *names[] = {"kind", "pos", "ipos", "types", "arity", "plan", "no_ent", "decisions", "exact",
                            "wild1", "wildn", "depths", "pfx", "pfx_lens", "ip", "rest", "commands", NULL};
    int kind, pos, ipos;
    Py_ssize_t arity;
    PyObject *types, *plan, *no_ent, *decisions, *exact, *wild1, *wildn, *depths, *pfx, *pfx_lens, *ip, *rest;
    PyObject *commands = Py_None;
    if (!g_configured) {
        PyErr_SetString(PyExc_RuntimeError, "polc accel: configure() was not called");
        return NULL;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kw, "iiiO!nOOO!OOOO!OO!OO|O", names, &kind, &pos, &ipos, &PyTuple_Type,
                                     &types, &arity, &plan, &no_ent, &PyDict_Type, &decisions, &exact, &wild1, &wildn,
                                     &PyTuple_Type, &depths, &pfx, &PyTuple_Type, &pfx_lens, &ip, &rest, &commands))
        return NULL;
    Py_ssize_t nt = PyTuple_GET_SIZE(types);
    if (kind < K_SCAN || kind > K_COMMAND || nt > MAX_PARAMS || arity != nt
        || (kind != K_SCAN && (pos < 0 || pos >= nt)) || ipos < -1 || ipos >= nt
        || (kind == K_COMMAND) != (commands != Py_None) || (commands != Py_None && !PyCallable_Check(commands))) {
        PyErr_SetString(PyExc_ValueError, "polc accel: inconsistent decider shape");
        return NULL;
    }
    DeciderObject *self = (DeciderObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->vectorcall = Decider_vectorcall;
    self->kind = kind;
    self->pos = pos;
    self->ipos = ipos;
    self->arity = arity;
    self->ntypes = nt;
    for (Py_ssize_t i = 0; i < nt; i++) {
        long t = PyLong_AsLong(PyTuple_GET_ITEM(types, i));
        if (t < PT_HOST || t > PT_COMMAND) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "polc accel: unknown parameter type code");
            Py_DECREF(self);
            return NULL;
        }
        self->types[i] = (unsigned char)t;
    }
    if (kind == K_COMMAND && self->types[pos] != PT_COMMAND) {
        PyErr_SetString(PyExc_ValueError, "polc accel: a command index of a parameter that is no command");
        Py_DECREF(self);
        return NULL;
    }
    if (commands != Py_None) {
        Py_INCREF(commands);
        self->commands = commands;
    }
    Py_INCREF(plan);
    self->plan = plan;
    Py_INCREF(no_ent);
    self->no_ent = no_ent;
    Py_INCREF(decisions);
    self->decisions = decisions;
    if (dict_or_null(exact, &self->exact, "exact") < 0 || dict_or_null(wild1, &self->wild1, "wild1") < 0
        || dict_or_null(wildn, &self->wildn, "wildn") < 0 || dict_or_null(pfx, &self->pfx, "pfx") < 0
        || tuple_or_null(ip, &self->ip, "ip") < 0 || tuple_or_null(rest, &self->rest, "rest") < 0
        || sizes(depths, &self->depths, &self->ndepths, "depths") < 0
        || sizes(pfx_lens, &self->pfx_lens, &self->npfx, "pfx_lens") < 0) {
        Py_DECREF(self);
        return NULL;
    }
    /* a probe of a bucket dict the shape lacks never happens: depths need wildn, pfx_lens need pfx */
    if ((self->ndepths && self->wildn == NULL) || (self->npfx && self->pfx == NULL)) {
        self->ndepths = self->ndepths && self->wildn ? self->ndepths : 0;
        self->npfx = self->npfx && self->pfx ? self->npfx : 0;
    }
    return (PyObject *)self;
}

static int
Decider_traverse(DeciderObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->plan);
    Py_VISIT(self->no_ent);
    Py_VISIT(self->decisions);
    Py_VISIT(self->exact);
    Py_VISIT(self->wild1);
    Py_VISIT(self->wildn);
    Py_VISIT(self->pfx);
    Py_VISIT(self->ip);
    Py_VISIT(self->rest);
    Py_VISIT(self->commands);
    return 0;
}

static int
Decider_clear(DeciderObject *self)
{
    Py_CLEAR(self->plan);
    Py_CLEAR(self->no_ent);
    Py_CLEAR(self->decisions);
    Py_CLEAR(self->exact);
    Py_CLEAR(self->wild1);
    Py_CLEAR(self->wildn);
    Py_CLEAR(self->pfx);
    Py_CLEAR(self->ip);
    Py_CLEAR(self->rest);
    Py_CLEAR(self->commands);
    return 0;
}

static void
Decider_dealloc(DeciderObject *self)
{
    PyObject_GC_UnTrack(self);
    Decider_clear(self);
    PyMem_Free(self->depths);
    PyMem_Free(self->pfx_lens);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
Decider_repr(DeciderObject *self)
{
    static const char *kinds[] = {"scan", "host", "key", "path", "command"};
    return PyUnicode_FromFormat("<polc accel decider %s@%d, %zd parameters>", kinds[self->kind], self->pos,
                                self->ntypes);
}

static PyTypeObject DeciderType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "polc.runtime.enforce._accel.Decider",
    .tp_basicsize = sizeof(DeciderObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "The fused decider of one plan, in C (deciders.write_decider's semantics).",
    .tp_new = Decider_new,
    .tp_traverse = (traverseproc)Decider_traverse,
    .tp_clear = (inquiry)Decider_clear,
    .tp_dealloc = (destructor)Decider_dealloc,
    .tp_vectorcall_offset = offsetof(DeciderObject, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_repr = (reprfunc)Decider_repr,
};

/* ------------------------------------------------------------------------ */
/* Checker */

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *cache; /* dict, or NULL when the cache is off */
    PyObject *plans; /* dict */
    PyObject *miss;  /* snapshot._miss(module, capability, args, cacheable) */
    PyObject *log_audit;
} CheckerObject;

/* Is every argument a plain str or int (a cache hit counts only then)? */
static int
plain_args(PyObject *args)
{
    Py_ssize_t n = PyTuple_GET_SIZE(args);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *a = PyTuple_GET_ITEM(args, i);
        if (!PyUnicode_CheckExact(a) && !PyLong_CheckExact(a))
            return 0;
    }
    return 1;
}

/* d returned after its audit flag is honoured: a new reference, or NULL (d released). */
static PyObject *
audited(CheckerObject *self, PyObject *d, PyObject *capability, PyObject *args)
{
    PyObject *flag = NULL;
    if (g_audit_offset >= 0 && Py_IS_TYPE(d, g_decision_type))
        flag = *(PyObject **)((char *)d + g_audit_offset);
    if (flag == Py_False)
        return d;
    if (flag != NULL)
        Py_INCREF(flag);
    else
        flag = PyObject_GetAttr(d, s_audit);
    if (flag == NULL) {
        Py_DECREF(d);
        return NULL;
    }
    int t = PyObject_IsTrue(flag);
    Py_DECREF(flag);
    if (t < 0) {
        Py_DECREF(d);
        return NULL;
    }
    if (t) {
        PyObject *r = PyObject_CallFunctionObjArgs(self->log_audit, d, capability, args, NULL);
        if (r == NULL) {
            Py_DECREF(d);
            return NULL;
        }
        Py_DECREF(r);
    }
    return d;
}

static PyObject *
call_miss(CheckerObject *self, PyObject *module, PyObject *capability, PyObject *args, int cacheable)
{
    return PyObject_CallFunctionObjArgs(self->miss, module, capability, args, cacheable ? Py_True : Py_False, NULL);
}

static PyObject *
Checker_vectorcall(PyObject *op, PyObject *const *argv, size_t nargsf, PyObject *kwnames)
{
    CheckerObject *self = (CheckerObject *)op;
    Py_ssize_t n = PyVectorcall_NARGS(nargsf);
    if (kwnames && PyTuple_GET_SIZE(kwnames)) {
        PyErr_SetString(PyExc_TypeError, "check() takes no keyword arguments");
        return NULL;
    }
    if (n < 2) {
        PyErr_SetString(PyExc_TypeError, "check() needs a module and a capability");
        return NULL;
    }
    if (self->plans == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "polc accel: checker used after it was cleared");
        return NULL;
    }
    PyObject *module = argv[0], *capability = argv[1];
    PyObject *args = PyTuple_New(n - 2);
    if (args == NULL)
        return NULL;
    for (Py_ssize_t i = 2; i < n; i++) {
        Py_INCREF(argv[i]);
        PyTuple_SET_ITEM(args, i - 2, argv[i]);
    }
    PyObject *result = NULL;
    /* Only an exact str module and capability reach the cache and the plans (a str
     * subclass's own __eq__/__hash__ could match another module's key): _miss decides the rest. */
    if (!PyUnicode_CheckExact(module) || !PyUnicode_CheckExact(capability))
        goto miss;
    if (self->cache != NULL) {
        PyObject *key = PyTuple_Pack(3, module, capability, args);
        if (key == NULL)
            goto fault;
        PyObject *d = PyDict_GetItemWithError(self->cache, key);
        Py_DECREF(key);
        if (d == NULL) {
            if (PyErr_Occurred())
                goto fault;
            result = call_miss(self, module, capability, args, 1);
            if (result == NULL)
                goto fault;
            goto done;
        }
        if (plain_args(args)) {
            Py_INCREF(d);
            result = audited(self, d, capability, args);
            if (result == NULL)
                goto fault;
            goto done;
        }
        result = call_miss(self, module, capability, args, 1);
        if (result == NULL)
            goto fault;
        goto done;
    }
    {
        PyObject *key = PyTuple_Pack(2, module, capability);
        if (key == NULL)
            goto fault;
        PyObject *fn = PyDict_GetItemWithError(self->plans, key);
        Py_DECREF(key);
        if (fn == NULL) {
            if (PyErr_Occurred())
                goto fault;
            goto miss;
        }
        Py_INCREF(fn);
        PyObject *d;
        if (Py_IS_TYPE(fn, &DeciderType) && ((DeciderObject *)fn)->plan != NULL)
            d = decide((DeciderObject *)fn, args);
        else
            d = PyObject_CallOneArg(fn, args);
        Py_DECREF(fn);
        if (d == NULL)
            goto fault;
        result = audited(self, d, capability, args);
        if (result == NULL)
            goto fault;
        goto done;
    }
fault:
    /* Snapshot.check's "except Exception": decided (and reported) by _miss */
    if (!PyErr_ExceptionMatches(PyExc_Exception))
        goto done; /* KeyboardInterrupt and friends propagate, as from the Python method */
    PyErr_Clear();
miss:
    result = call_miss(self, module, capability, args, 0);
done:
    Py_DECREF(args);
    return result;
}

static PyObject *
Checker_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    static char *names[] = {"cache", "plans", "miss", "log_audit", NULL};
    PyObject *cache, *plans, *miss, *log_audit;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO!OO", names, &cache, &PyDict_Type, &plans, &miss, &log_audit))
        return NULL;
    if (cache != Py_None && !PyDict_Check(cache)) {
        PyErr_SetString(PyExc_TypeError, "cache must be a dict or None");
        return NULL;
    }
    CheckerObject *self = (CheckerObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->vectorcall = Checker_vectorcall;
    if (cache != Py_None) {
        Py_INCREF(cache);
        self->cache = cache;
    }
    Py_INCREF(plans);
    self->plans = plans;
    Py_INCREF(miss);
    self->miss = miss;
    Py_INCREF(log_audit);
    self->log_audit = log_audit;
    return (PyObject *)self;
}

static int
Checker_traverse(CheckerObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->cache);
    Py_VISIT(self->plans);
    Py_VISIT(self->miss);
    Py_VISIT(self->log_audit);
    return 0;
}

static int
Checker_clear(CheckerObject *self)
{
    Py_CLEAR(self->cache);
    Py_CLEAR(self->plans);
    Py_CLEAR(self->miss);
    Py_CLEAR(self->log_audit);
    return 0;
}

static void
Checker_dealloc(CheckerObject *self)
{
    PyObject_GC_UnTrack(self);
    Checker_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
Checker_repr(CheckerObject *self)
{
    return PyUnicode_FromFormat("<polc accel check, cache %s>", self->cache ? "on" : "off");
}

static PyTypeObject CheckerType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "polc.runtime.enforce._accel.Checker",
    .tp_basicsize = sizeof(CheckerObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "Snapshot.check of one snapshot, in C (the cache, the plan lookup and the decider).",
    .tp_new = Checker_new,
    .tp_traverse = (traverseproc)Checker_traverse,
    .tp_clear = (inquiry)Checker_clear,
    .tp_dealloc = (destructor)Checker_dealloc,
    .tp_vectorcall_offset = offsetof(CheckerObject, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_repr = (reprfunc)Checker_repr,
};

/* ------------------------------------------------------------------------ */
/* configure(): the memo dicts and normalisers, once, from accel.py */

static int
take(PyObject *d, const char *name, PyObject **slot, int want_dict)
{
    PyObject *v = PyDict_GetItemString(d, name);
    if (v == NULL) {
        PyErr_Format(PyExc_KeyError, "configure() needs %s", name);
        return -1;
    }
    if (want_dict ? !PyDict_Check(v) : !PyCallable_Check(v)) {
        PyErr_Format(PyExc_TypeError, "configure(): %s must be a %s", name, want_dict ? "dict" : "callable");
        return -1;
    }
    Py_INCREF(v);
    Py_XSETREF(*slot, v);
    return 0;
}

static PyObject *
configure(PyObject *mod, PyObject *d)
{
    if (!PyDict_Check(d)) {
        PyErr_SetString(PyExc_TypeError, "configure() takes a dict");
        return NULL;
    }
    if (take(d, "host_memo", &g_host_memo, 1) < 0 || take(d, "path_memo", &g_path_memo, 1) < 0
        || take(d, "suffixes_memo", &g_suffixes_memo, 1) < 0 || take(d, "segments_memo", &g_segments_memo, 1) < 0
        || take(d, "norm_host", &g_norm_host, 0) < 0 || take(d, "norm_path", &g_norm_path, 0) < 0
        || take(d, "norm_port", &g_norm_port, 0) < 0 || take(d, "norm_string", &g_norm_string, 0) < 0
        || take(d, "norm_int", &g_norm_int, 0) < 0 || take(d, "norm_command", &g_norm_command, 0) < 0
        || take(d, "suffixes", &g_suffixes, 0) < 0 || take(d, "segment_prefixes", &g_segment_prefixes, 0) < 0)
        return NULL;
    PyObject *lo = PyDict_GetItemString(d, "port_min"), *hi = PyDict_GetItemString(d, "port_max");
    PyObject *big = PyDict_GetItemString(d, "big");
    if (lo == NULL || hi == NULL || big == NULL || !PyLong_CheckExact(lo) || !PyLong_CheckExact(hi)
        || !PyLong_CheckExact(big)) {
        PyErr_SetString(PyExc_TypeError, "configure() needs int port_min, port_max and big");
        return NULL;
    }
    long long a = PyLong_AsLongLong(lo), b = PyLong_AsLongLong(hi), c = PyLong_AsLongLong(big);
    if (PyErr_Occurred())
        return NULL;
    PyObject *matchers = PyDict_GetItemString(d, "matchers");
    if (matchers == NULL || !PyDict_Check(matchers)) {
        PyErr_SetString(PyExc_TypeError, "configure() needs matchers: a dict name -> (code, cell indices)");
        return NULL;
    }
    for (int k = 0; k < M_KINDS; k++) {
        PyObject *spec = PyDict_GetItemString(matchers, matcher_names[k]);
        if (spec == NULL) {
            Py_CLEAR(g_codes[k]); /* not given: such closures are called */
            continue;
        }
        PyObject *code, *cells;
        if (!PyArg_ParseTuple(spec, "O!O!", &PyCode_Type, &code, &PyTuple_Type, &cells) || PyTuple_GET_SIZE(cells) < 1
            || PyTuple_GET_SIZE(cells) > MAX_CELLS) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError, "configure(): matcher %s must be (code, (cell index, ...))", matcher_names[k]);
            return NULL;
        }
        for (Py_ssize_t j = 0; j < MAX_CELLS; j++) {
            Py_ssize_t idx = j < PyTuple_GET_SIZE(cells) ? PyLong_AsSsize_t(PyTuple_GET_ITEM(cells, j)) : -1;
            if (idx == -1 && PyErr_Occurred())
                return NULL;
            g_cells[k][j] = idx;
        }
        Py_INCREF(code);
        Py_XSETREF(g_codes[k], code);
    }
    PyObject *true_fn = PyDict_GetItemString(d, "true");
    Py_XINCREF(true_fn);
    Py_XSETREF(g_true_fn, true_fn);
    /* Decision.audit: a member descriptor of an object slot, read directly */
    PyObject *dtype = PyDict_GetItemString(d, "decision");
    g_audit_offset = -1;
    if (dtype != NULL && PyType_Check(dtype)) {
        PyObject *descr = PyDict_GetItemWithError(((PyTypeObject *)dtype)->tp_dict, s_audit);
        if (descr != NULL && Py_IS_TYPE(descr, &PyMemberDescr_Type)) {
            PyMemberDef *member = ((PyMemberDescrObject *)descr)->d_member;
            if (member->type == T_OBJECT_EX) {
                Py_INCREF(dtype);
                Py_XSETREF(g_decision_type, (PyTypeObject *)dtype);
                g_audit_offset = member->offset;
            }
        }
        if (PyErr_Occurred())
            return NULL;
    }
    g_port_min = a;
    g_port_max = b;
    g_big = c;
    g_configured = 1;
    Py_RETURN_NONE;
}

/* native_kind(fn): the name of the native test run_check applies to fn, or None (it is called). */
static PyObject *
native_kind(PyObject *mod, PyObject *fn)
{
    if (fn == g_true_fn)
        return PyUnicode_FromString("true");
    if (PyFunction_Check(fn)) {
        PyObject *code = PyFunction_GET_CODE(fn);
        for (int k = 0; k < M_KINDS; k++)
            if (code == g_codes[k])
                return PyUnicode_FromString(matcher_names[k]);
    }
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"native_kind", native_kind, METH_O, "The native test of a matcher, or None when it is called."},
    {"configure", configure, METH_O, "Set the normalisation memos and normalisers the deciders use."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef accel_module = {
    PyModuleDef_HEAD_INIT, "_accel", "The hot path of Snapshot.check in C (optional; POLC_ACCEL).", -1,
    module_methods,
};

PyMODINIT_FUNC
PyInit__accel(void)
{
    if (PyType_Ready(&DeciderType) < 0 || PyType_Ready(&CheckerType) < 0)
        return NULL;
    s_wrong_arity = PyUnicode_InternFromString("_wrong_arity");
    s_bad_argument = PyUnicode_InternFromString("_bad_argument");
    s_ranked_decision = PyUnicode_InternFromString("_ranked_decision");
    s_audit = PyUnicode_InternFromString("audit");
    if (!s_wrong_arity || !s_bad_argument || !s_ranked_decision || !s_audit)
        return NULL;
    PyObject *m = PyModule_Create(&accel_module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&DeciderType);
    if (PyModule_AddObject(m, "Decider", (PyObject *)&DeciderType) < 0) {
        Py_DECREF(&DeciderType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&CheckerType);
    if (PyModule_AddObject(m, "Checker", (PyObject *)&CheckerType) < 0) {
        Py_DECREF(&CheckerType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
