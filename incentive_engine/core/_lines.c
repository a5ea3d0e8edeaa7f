/* The usual service-cost line of a CRM export, read in C: ``core.reading._cost_line`` without the regular
 * expression, the dict of groups and the Python steps that build the event.
 *
 * Why C: two thirds of a month's lines are service costs, and in Python each cost 1.7-1.9 us to read and
 * another 1.0 us to write back as the canonical payload the ledger stores (``events.payload_json``); here
 * both are one pass over the characters and the few objects the event is made of (0.8-0.9 us).
 *
 * The rules are those of ``_COST_LINE`` (the same shape, character classes and lengths, the whole line)
 * and of ``_cost_line`` (the date through ``days`` and the ``day`` reader given, the event built as
 * ``ServiceCost.model_construct`` would, the payload only when the amount is written canonically), never
 * looser: a line this reader refuses goes the general way, which reports its problems. A test checks it
 * against the Python reader on generated lines.
 *
 *   setup(cls, decimal, day, days, given, given_with_id)    once, from core.reading
 *   cost_line(line) -> (event, payload or None) or None
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

static PyObject *cost_cls, *decimal_cls, *day_fn, *days, *given, *given_with_id;
static PyObject *s_type_value, *s_dict, *s_fields_set, *s_extra, *s_private, *k_type, *k_effective, *k_event_id,
    *k_contract_id, *k_amount, *no_args;

#define DAYS_KEPT 100000 /* as reading._day: the cache of dates stays bounded */

typedef struct {
    int kind;
    const void *data;
    Py_ssize_t n, i;
} cursor_t;

static inline Py_UCS4 at(const cursor_t *c, Py_ssize_t i) { return i < c->n ? PyUnicode_READ(c->kind, c->data, i) : 0; }

/* the literal text `lit` (ASCII) at the cursor */
static int lit(cursor_t *c, const char *lit) {
    size_t n = strlen(lit);
    if (c->i + (Py_ssize_t)n > c->n) return 0;
    if (c->kind == PyUnicode_1BYTE_KIND) { /* most lines: compare the bytes at once */
        if (memcmp((const char *)c->data + c->i, lit, n) != 0) return 0;
    } else {
        for (size_t k = 0; k < n; k++)
            if (PyUnicode_READ(c->kind, c->data, c->i + (Py_ssize_t)k) != (Py_UCS4)(unsigned char)lit[k]) return 0;
    }
    c->i += (Py_ssize_t)n;
    return 1;
}

static void optional_space(cursor_t *c) {
    if (at(c, c->i) == ' ') c->i++;
}

/* `"name": ?"` with the optional space of the pattern */
static int key(cursor_t *c, const char *name) {
    if (!lit(c, "\"") || !lit(c, name) || !lit(c, "\":")) return 0;
    optional_space(c);
    return lit(c, "\"");
}

/* `, ?` */
static int separator(cursor_t *c) {
    if (!lit(c, ",")) return 0;
    optional_space(c);
    return 1;
}

static inline int is_digit(Py_UCS4 ch) { return ch >= '0' && ch <= '9'; }
static inline int alnum(Py_UCS4 ch) { return is_digit(ch) || (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z'); }

static int digits(cursor_t *c, Py_ssize_t least, Py_ssize_t most) {
    Py_ssize_t k = 0;
    while (k < most && is_digit(at(c, c->i + k))) k++;
    if (k < least || is_digit(at(c, c->i + k))) return 0; /* a longer run: the pattern has no room for it */
    c->i += k;
    return 1;
}

static PyObject *cost_line(PyObject *self, PyObject *line) {
    if (!cost_cls) {
        PyErr_SetString(PyExc_RuntimeError, "_lines.setup was not called");
        return NULL;
    }
    if (!PyUnicode_Check(line)) {
        PyErr_SetString(PyExc_TypeError, "cost_line: a str is needed");
        return NULL;
    }
    cursor_t c = {PyUnicode_KIND(line), PyUnicode_DATA(line), PyUnicode_GET_LENGTH(line), 0};
    Py_ssize_t eff0, id0 = -1, id1 = -1, cid0, cid1, amt0, amt1;
    if (!lit(&c, "{\"type\":")) Py_RETURN_NONE;
    optional_space(&c);
    if (!lit(&c, "\"service.cost\"") || !separator(&c) || !key(&c, "effective")) Py_RETURN_NONE;
    eff0 = c.i;
    if (!digits(&c, 4, 4) || !lit(&c, "-") || !digits(&c, 2, 2) || !lit(&c, "-") || !digits(&c, 2, 2) ||
        !lit(&c, "\"") || !separator(&c))
        Py_RETURN_NONE;
    if (lit(&c, "\"event_id\":")) { /* `"event_id": ?"([^"\\\x00-\x1f\x7f]{1,128})", ?` */
        optional_space(&c);
        if (!lit(&c, "\"")) Py_RETURN_NONE;
        id0 = c.i;
        Py_UCS4 ch;
        while (c.i < c.n && (ch = at(&c, c.i)) != '"' && ch != '\\' && ch > 0x1f && ch != 0x7f && c.i - id0 < 129) c.i++;
        id1 = c.i;
        if (id1 - id0 < 1 || id1 - id0 > 128 || !lit(&c, "\"") || !separator(&c)) Py_RETURN_NONE;
    }
    if (!key(&c, "contract_id")) Py_RETURN_NONE; /* `"([A-Za-z0-9][A-Za-z0-9._:@-]{0,63})"` */
    cid0 = c.i;
    if (!alnum(at(&c, c.i))) Py_RETURN_NONE;
    c.i++;
    for (Py_UCS4 ch; (ch = at(&c, c.i)) && (alnum(ch) || ch == '.' || ch == '_' || ch == ':' || ch == '@' || ch == '-');)
        c.i++;
    cid1 = c.i;
    if (cid1 - cid0 > 64 || !lit(&c, "\"") || !separator(&c) || !key(&c, "amount")) Py_RETURN_NONE;
    amt0 = c.i; /* `"([0-9]{1,15}(?:\.[0-9]{1,20})?)"` */
    if (!digits(&c, 1, 15)) Py_RETURN_NONE;
    if (lit(&c, ".") && !digits(&c, 1, 20)) Py_RETURN_NONE;
    amt1 = c.i;
    if (!lit(&c, "\"}") || c.i != c.n) Py_RETURN_NONE;

    PyObject *effective = NULL, *day = NULL, *event_id = NULL, *contract_id = NULL, *amount_text = NULL;
    PyObject *amount = NULL, *values = NULL, *fields_set = NULL, *event = NULL, *payload = NULL, *result = NULL;
    if (!(effective = PyUnicode_Substring(line, eff0, eff0 + 10))) goto done;
    day = PyDict_GetItemWithError(days, effective);
    if (day) {
        Py_INCREF(day);
    } else {
        if (PyErr_Occurred() || !(day = PyObject_CallOneArg(day_fn, effective))) goto done; /* caches it */
        if (day == Py_None) {
            result = Py_NewRef(Py_None); /* not a calendar date: the general way says so */
            goto done;
        }
    }
    if ((id0 >= 0 && !(event_id = PyUnicode_Substring(line, id0, id1))) ||
        !(contract_id = PyUnicode_Substring(line, cid0, cid1)) || !(amount_text = PyUnicode_Substring(line, amt0, amt1)) ||
        !(amount = PyObject_CallOneArg(decimal_cls, amount_text)))
        goto done;
    if (!(values = PyDict_New()) || PyDict_SetItem(values, k_type, s_type_value) < 0 ||
        PyDict_SetItem(values, k_effective, day) < 0 ||
        PyDict_SetItem(values, k_event_id, event_id ? event_id : Py_None) < 0 ||
        PyDict_SetItem(values, k_contract_id, contract_id) < 0 || PyDict_SetItem(values, k_amount, amount) < 0)
        goto done;
    if (!(fields_set = PySet_New(event_id ? given_with_id : given))) goto done;
    /* what reading._cost_line does: object.__new__, then object.__setattr__ of the instance dict and
     * pydantic's three slots (no model validation, no __init__) */
    if (!(event = PyBaseObject_Type.tp_new((PyTypeObject *)cost_cls, no_args, NULL))) goto done;
    if (PyObject_GenericSetAttr(event, s_dict, values) < 0 || PyObject_GenericSetAttr(event, s_fields_set, fields_set) < 0 ||
        PyObject_GenericSetAttr(event, s_extra, Py_None) < 0 || PyObject_GenericSetAttr(event, s_private, Py_None) < 0)
        goto done;
    /* the canonical payload (``events.payload_json``: sorted keys, the amount as ``f"{amount:f}"``) is the
     * text as written unless the amount has a leading zero before a digit ("007.50" is 7.50) */
    if (amt1 - amt0 > 1 && at(&c, amt0) == '0' && at(&c, amt0 + 1) != '.') {
        payload = Py_NewRef(Py_None);
    } else { /* {"amount":"<amount>","contract_id":"<contract_id>"}: ASCII, both by their patterns */
        static const char a[] = "{\"amount\":\"", b[] = "\",\"contract_id\":\"", z[] = "\"}";
        Py_ssize_t na = amt1 - amt0, nc = cid1 - cid0, n = (Py_ssize_t)(sizeof a + sizeof b + sizeof z - 3) + na + nc;
        if (!(payload = PyUnicode_New(n, 127))) goto done;
        char *out = (char *)PyUnicode_DATA(payload);
        memcpy(out, a, sizeof a - 1);
        out += sizeof a - 1;
        memcpy(out, PyUnicode_DATA(amount_text), (size_t)na);
        out += na;
        memcpy(out, b, sizeof b - 1);
        out += sizeof b - 1;
        memcpy(out, PyUnicode_DATA(contract_id), (size_t)nc);
        out += nc;
        memcpy(out, z, sizeof z - 1);
    }
    result = PyTuple_Pack(2, event, payload);
done:
    Py_XDECREF(effective);
    Py_XDECREF(day);
    Py_XDECREF(event_id);
    Py_XDECREF(contract_id);
    Py_XDECREF(amount_text);
    Py_XDECREF(amount);
    Py_XDECREF(values);
    Py_XDECREF(fields_set);
    Py_XDECREF(event);
    Py_XDECREF(payload);
    return result;
}

static PyObject *setup(PyObject *self, PyObject *args) {
    PyObject *cls, *dec, *day, *cache, *g, *gi;
    if (!PyArg_ParseTuple(args, "O!OOO!O!O!", &PyType_Type, &cls, &dec, &day, &PyDict_Type, &cache, &PyFrozenSet_Type,
                          &g, &PyFrozenSet_Type, &gi))
        return NULL;
    if (!s_dict) {
        if (!(s_type_value = PyUnicode_InternFromString("service.cost")) ||
            !(s_dict = PyUnicode_InternFromString("__dict__")) ||
            !(s_fields_set = PyUnicode_InternFromString("__pydantic_fields_set__")) ||
            !(s_extra = PyUnicode_InternFromString("__pydantic_extra__")) ||
            !(s_private = PyUnicode_InternFromString("__pydantic_private__")) ||
            !(k_type = PyUnicode_InternFromString("type")) || !(k_effective = PyUnicode_InternFromString("effective")) ||
            !(k_event_id = PyUnicode_InternFromString("event_id")) ||
            !(k_contract_id = PyUnicode_InternFromString("contract_id")) ||
            !(k_amount = PyUnicode_InternFromString("amount")) || !(no_args = PyTuple_New(0)))
            return NULL;
    }
    Py_XSETREF(cost_cls, Py_NewRef(cls));
    Py_XSETREF(decimal_cls, Py_NewRef(dec));
    Py_XSETREF(day_fn, Py_NewRef(day));
    Py_XSETREF(days, Py_NewRef(cache));
    Py_XSETREF(given, Py_NewRef(g));
    Py_XSETREF(given_with_id, Py_NewRef(gi));
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"setup", setup, METH_VARARGS, "setup(cls, decimal, day, days, given, given_with_id): what cost_line builds with"},
    {"cost_line", cost_line, METH_O, "cost_line(line) -> (ServiceCost, canonical payload or None), or None"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_lines", NULL, -1, methods};

PyMODINIT_FUNC PyInit__lines(void) { return PyModule_Create(&module); }
