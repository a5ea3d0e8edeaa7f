/* The service costs of an SQLite ledger, read in C for a replay (`shell.store.Ledger.fold`).
 *
 * Why C: service costs are most of a ledger's rows (1.15M of the 1.87M of the benchmark's M ledger after
 * 58 months), and in a replay each of them cost a row fetched into Python objects, its payload split, a
 * date and a Decimal, and a step into its contract's list (4-5 us a row, most of a replay's time).
 * Here the cost rows are read and split on a connection of their own, in a thread that does not hold the
 * GIL, while Python folds the other rows; then each contract's costs come back as one list of facts.
 *
 *   scan(path, after, upto) -> capsule | None
 *       every `service.cost` row with after < position <= upto, read in one transaction with the GIL
 *       released; None when it cannot be done here (see below)
 *   facts(capsule, fact_type, decimal_type) -> (groups, last_position) | None
 *       groups: [(contract_id, [fact_type((date, position, decimal_type(amount))), ...], ordered), ...],
 *       one per contract in the order of its first cost, each list in position order; `ordered` says the
 *       list is also in (effective, position) order (the order a contract keeps its costs in)
 *
 * None sends the caller back to Python, which then reads the cost rows itself, so what a replay produces
 * never depends on this module (a test compares the two): when the file cannot be opened read-only, when
 * this connection does not see every row up to `upto` (the caller's snapshot holds rows it does not), when
 * a payload is not exactly the canonical JSON of the two keys (`{"amount":"...","contract_id":"..."}`,
 * neither value holding a quote or a backslash: the shape the Python fold splits without a decoder), or
 * when an effective date, a text or an amount does not convert.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <datetime.h>
#include <sqlite3.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* --- what a scan holds ----------------------------------------------------------------------------- */

typedef struct {
    sqlite3_int64 position;
    int32_t day;        /* YYYYMMDD, digits checked; the calendar is checked when the date is built */
    uint32_t group;     /* the contract's group */
    size_t amount_off;  /* the amount's text in the arena */
    uint32_t amount_len;
} entry_t;

typedef struct {
    size_t key_off; /* the contract id's text in the arena */
    uint32_t key_len;
    uint32_t count, start; /* its costs: order[start .. start + count) */
} group_t;

typedef struct {
    entry_t *entries;
    size_t n, cap;
    group_t *groups;
    size_t ngroups, gcap;
    uint32_t *slots; /* open addressing: group index + 1, 0 for an empty slot */
    size_t nslots;   /* a power of two */
    char *arena;
    size_t alen, acap;
    uint32_t *order; /* entry indexes, grouped by contract, in position order within each group */
} scan_t;

static void scan_free(scan_t *s) {
    if (!s) return;
    free(s->entries);
    free(s->groups);
    free(s->slots);
    free(s->arena);
    free(s->order);
    free(s);
}

static int grow(void **p, size_t *cap, size_t need, size_t size) {
    if (need <= *cap) return 1;
    size_t c = *cap ? *cap : 1024;
    while (c < need) c *= 2;
    void *q = realloc(*p, c * size);
    if (!q) return 0;
    *p = q;
    *cap = c;
    return 1;
}

static int arena_put(scan_t *s, const char *text, size_t n, size_t *off) {
    if (!grow((void **)&s->arena, &s->acap, s->alen + n, 1)) return 0;
    memcpy(s->arena + s->alen, text, n);
    *off = s->alen;
    s->alen += n;
    return 1;
}

static uint64_t fnv1a(const char *p, size_t n) {
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)p[i]) * 1099511628211ULL;
    return h;
}

static int rehash(scan_t *s) {
    size_t n = s->nslots ? s->nslots * 2 : 1 << 16;
    uint32_t *slots = calloc(n, sizeof(uint32_t));
    if (!slots) return 0;
    for (size_t g = 0; g < s->ngroups; g++) {
        size_t i = (size_t)fnv1a(s->arena + s->groups[g].key_off, s->groups[g].key_len) & (n - 1);
        while (slots[i]) i = (i + 1) & (n - 1);
        slots[i] = (uint32_t)g + 1;
    }
    free(s->slots);
    s->slots = slots;
    s->nslots = n;
    return 1;
}

/* The group of a contract id, created on its first cost; -1 when out of memory. */
static long long group_of(scan_t *s, const char *key, size_t n) {
    if ((s->ngroups + 1) * 2 > s->nslots && !rehash(s)) return -1;
    size_t mask = s->nslots - 1, i = (size_t)fnv1a(key, n) & mask;
    for (;; i = (i + 1) & mask) {
        uint32_t g = s->slots[i];
        if (!g) break;
        group_t *gr = &s->groups[g - 1];
        if (gr->key_len == n && memcmp(s->arena + gr->key_off, key, n) == 0) return g - 1;
    }
    if (s->ngroups >= UINT32_MAX - 1 || !grow((void **)&s->groups, &s->gcap, s->ngroups + 1, sizeof(group_t)))
        return -1;
    group_t *gr = &s->groups[s->ngroups];
    if (!arena_put(s, key, n, &gr->key_off)) return -1;
    gr->key_len = (uint32_t)n;
    gr->count = gr->start = 0;
    s->slots[i] = (uint32_t)++s->ngroups;
    return (long long)s->ngroups - 1;
}

/* --- the scan (no Python object is touched: it runs without the GIL) -------------------------------- */

static int digits(const unsigned char *p, int n, int *out) {
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9') return 0;
        v = v * 10 + (p[i] - '0');
    }
    *out = v;
    return 1;
}

/* One cost row into the scan: 1, or 0 when the row is not of the shape handled here (or out of memory). */
static int add_row(scan_t *s, sqlite3_stmt *st) {
    static const char head[] = "{\"amount\":\"", sep[] = "\",\"contract_id\":\"";
    const size_t head_n = sizeof head - 1, sep_n = sizeof sep - 1;
    if (sqlite3_column_type(st, 0) != SQLITE_INTEGER || sqlite3_column_type(st, 1) != SQLITE_TEXT ||
        sqlite3_column_type(st, 2) != SQLITE_TEXT)
        return 0;
    const unsigned char *eff = sqlite3_column_text(st, 1);
    const char *p = (const char *)sqlite3_column_text(st, 2);
    size_t n = (size_t)sqlite3_column_bytes(st, 2);
    int y, m, d;
    if (!eff || !p || sqlite3_column_bytes(st, 1) != 10 || eff[4] != '-' || eff[7] != '-' || !digits(eff, 4, &y) ||
        !digits(eff + 5, 2, &m) || !digits(eff + 8, 2, &d))
        return 0;
    /* {"amount":"A","contract_id":"C"}: A and C free of quotes and backslashes */
    if (n < head_n + sep_n + 2 || memcmp(p, head, head_n) != 0 || p[n - 2] != '"' || p[n - 1] != '}') return 0;
    const char *amount = p + head_n, *end = p + n - 2;
    const char *q = memchr(amount, '"', (size_t)(end - amount));
    if (!q || (size_t)(end - q) < sep_n || memcmp(q, sep, sep_n) != 0) return 0;
    const char *cid = q + sep_n;
    size_t amount_n = (size_t)(q - amount), cid_n = (size_t)(end - cid);
    if (memchr(amount, '\\', amount_n) || memchr(cid, '"', cid_n) || memchr(cid, '\\', cid_n)) return 0;
    if (amount_n > UINT32_MAX || cid_n > UINT32_MAX) return 0;
    long long g = group_of(s, cid, cid_n);
    if (g < 0 || !grow((void **)&s->entries, &s->cap, s->n + 1, sizeof(entry_t))) return 0;
    entry_t *e = &s->entries[s->n];
    if (!arena_put(s, amount, amount_n, &e->amount_off)) return 0;
    e->position = sqlite3_column_int64(st, 0);
    e->day = y * 10000 + m * 100 + d;
    e->group = (uint32_t)g;
    e->amount_len = (uint32_t)amount_n;
    s->groups[g].count++;
    s->n++;
    return 1;
}

static scan_t *scan_rows(const char *path, sqlite3_int64 after, sqlite3_int64 upto) {
    /* `+type`: a scan of the table in position order, not a search of the (type, effective) index */
    static const char sql[] = "SELECT position, effective, payload FROM ledger_event "
                              "WHERE position > ?1 AND position <= ?2 AND +type = 'service.cost' ORDER BY position";
    scan_t *s = calloc(1, sizeof(scan_t));
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    int ok = s && sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL) == SQLITE_OK;
    if (ok) {
        sqlite3_busy_timeout(db, 30000);
        ok = sqlite3_exec(db, "BEGIN", NULL, NULL, NULL) == SQLITE_OK;
    }
    if (ok) { /* one snapshot: it must hold every row the caller's holds */
        ok = sqlite3_prepare_v2(db, "SELECT MAX(position) FROM ledger_event", -1, &st, NULL) == SQLITE_OK &&
             sqlite3_step(st) == SQLITE_ROW && sqlite3_column_type(st, 0) == SQLITE_INTEGER &&
             sqlite3_column_int64(st, 0) >= upto;
        sqlite3_finalize(st);
        st = NULL;
    }
    ok = ok && sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK;
    if (ok) {
        sqlite3_bind_int64(st, 1, after);
        sqlite3_bind_int64(st, 2, upto);
        int rc;
        while (ok && (rc = sqlite3_step(st)) == SQLITE_ROW) ok = add_row(s, st);
        ok = ok && rc == SQLITE_DONE;
    }
    sqlite3_finalize(st);
    if (db) {
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
        sqlite3_close(db);
    }
    /* each group's entries together, in position order (a counting sort: the rows came in position order) */
    if (ok && s->n > UINT32_MAX) ok = 0;
    if (ok && (s->order = malloc((s->n ? s->n : 1) * sizeof(uint32_t))) == NULL) ok = 0;
    if (ok) {
        uint32_t next = 0;
        for (size_t g = 0; g < s->ngroups; g++) {
            s->groups[g].start = next;
            next += s->groups[g].count;
            s->groups[g].count = 0;
        }
        for (size_t i = 0; i < s->n; i++) {
            group_t *g = &s->groups[s->entries[i].group];
            s->order[g->start + g->count++] = (uint32_t)i;
        }
    }
    if (!ok) {
        scan_free(s);
        return NULL;
    }
    return s;
}

static void capsule_free(PyObject *capsule) { scan_free(PyCapsule_GetPointer(capsule, "costs_scan")); }

static PyObject *scan(PyObject *self, PyObject *args) {
    const char *path;
    long long after, upto;
    if (!PyArg_ParseTuple(args, "sLL", &path, &after, &upto)) return NULL;
    scan_t *s;
    Py_BEGIN_ALLOW_THREADS
    s = scan_rows(path, after, upto);
    Py_END_ALLOW_THREADS
    if (!s) Py_RETURN_NONE;
    PyObject *capsule = PyCapsule_New(s, "costs_scan", capsule_free);
    if (!capsule) scan_free(s);
    return capsule;
}

/* --- the facts (with the GIL) ----------------------------------------------------------------------- */

/* date objects by YYYYMMDD: a ledger has a few thousand distinct dates, each built once */
typedef struct {
    int32_t *keys;
    PyObject **dates;
    size_t cap, used;
} days_t;

static void days_free(days_t *t) {
    for (size_t i = 0; i < t->cap; i++) Py_XDECREF(t->dates[i]);
    free(t->keys);
    free(t->dates);
}

static size_t day_slot(days_t *t, int32_t key) {
    size_t i = ((uint32_t)key * 2654435761u) & (t->cap - 1);
    while (t->dates[i] && t->keys[i] != key) i = (i + 1) & (t->cap - 1);
    return i;
}

/* A borrowed reference to the date, or NULL (an exception set: not a calendar date, or out of memory). */
static PyObject *day(days_t *t, int32_t key) {
    if ((t->used + 1) * 2 > t->cap) {
        days_t bigger = {NULL, NULL, t->cap ? t->cap * 2 : 4096, 0};
        bigger.keys = calloc(bigger.cap, sizeof(int32_t));
        bigger.dates = calloc(bigger.cap, sizeof(PyObject *));
        if (!bigger.keys || !bigger.dates) {
            free(bigger.keys);
            free(bigger.dates);
            PyErr_NoMemory();
            return NULL;
        }
        for (size_t i = 0; i < t->cap; i++)
            if (t->dates[i]) {
                size_t j = day_slot(&bigger, t->keys[i]);
                bigger.keys[j] = t->keys[i];
                bigger.dates[j] = t->dates[i];
            }
        bigger.used = t->used;
        free(t->keys);
        free(t->dates);
        *t = bigger;
    }
    size_t i = day_slot(t, key);
    if (!t->dates[i]) {
        PyObject *d = PyDate_FromDate(key / 10000, key / 100 % 100, key % 100);
        if (!d) return NULL;
        t->keys[i] = key;
        t->dates[i] = d;
        t->used++;
    }
    return t->dates[i];
}

static PyObject *fact(PyTypeObject *fact_type, PyObject *date, sqlite3_int64 position, PyObject *amount) {
    PyObject *f = fact_type->tp_alloc(fact_type, 3);
    PyObject *pos = PyLong_FromLongLong(position);
    if (!f || !pos) {
        Py_XDECREF(f);
        Py_XDECREF(pos);
        Py_DECREF(amount);
        return NULL;
    }
    Py_INCREF(date);
    PyTuple_SET_ITEM(f, 0, date);
    PyTuple_SET_ITEM(f, 1, pos);
    PyTuple_SET_ITEM(f, 2, amount); /* the reference is the fact's now */
    return f;
}

static PyObject *group_facts(scan_t *s, group_t *g, PyTypeObject *fact_type, PyObject *decimal, days_t *days) {
    PyObject *list = PyList_New(g->count);
    if (!list) return NULL;
    int ordered = 1;
    int32_t last_day = INT32_MIN;
    for (uint32_t k = 0; k < g->count; k++) {
        entry_t *e = &s->entries[s->order[g->start + k]];
        if (e->day < last_day) ordered = 0; /* positions rise within a group: only the dates can fall */
        last_day = e->day;
        PyObject *date = day(days, e->day), *f = NULL;
        PyObject *text = date ? PyUnicode_DecodeUTF8(s->arena + e->amount_off, e->amount_len, "strict") : NULL;
        PyObject *amount = text ? PyObject_CallOneArg(decimal, text) : NULL;
        Py_XDECREF(text);
        if (amount) f = fact(fact_type, date, e->position, amount);
        if (!f) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, k, f);
    }
    PyObject *cid = PyUnicode_DecodeUTF8(s->arena + g->key_off, g->key_len, "strict");
    if (!cid) {
        Py_DECREF(list);
        return NULL;
    }
    return Py_BuildValue("(NNO)", cid, list, ordered ? Py_True : Py_False);
}

static PyObject *facts(PyObject *self, PyObject *args) {
    PyObject *capsule, *decimal;
    PyTypeObject *fact_type;
    if (!PyArg_ParseTuple(args, "OO!O", &capsule, &PyType_Type, &fact_type, &decimal)) return NULL;
    scan_t *s = PyCapsule_GetPointer(capsule, "costs_scan");
    if (!s) return NULL;
    /* a fact is a plain tuple of three underneath (a named tuple): built here as tuple.__new__ builds it */
    if (!PyType_IsSubtype(fact_type, &PyTuple_Type) || fact_type->tp_basicsize != PyTuple_Type.tp_basicsize ||
        fact_type->tp_itemsize != PyTuple_Type.tp_itemsize || fact_type->tp_dictoffset != 0) {
        PyErr_SetString(PyExc_TypeError, "fact_type must be a tuple subclass without instance attributes");
        return NULL;
    }
    days_t days = {0};
    sqlite3_int64 last = 0;
    PyObject *groups = PyList_New((Py_ssize_t)s->ngroups);
    for (size_t g = 0; groups && g < s->ngroups; g++) {
        PyObject *item = group_facts(s, &s->groups[g], fact_type, decimal, &days);
        if (!item) {
            Py_CLEAR(groups);
            break;
        }
        PyList_SET_ITEM(groups, (Py_ssize_t)g, item);
    }
    if (s->n) last = s->entries[s->n - 1].position;
    days_free(&days);
    if (!groups) { /* something did not convert: the caller reads the costs in Python, which says what */
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    return Py_BuildValue("(NL)", groups, (long long)last);
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS,
     "scan(path, after, upto) -> capsule or None: the service costs after < position <= upto, without the GIL."},
    {"facts", facts, METH_VARARGS,
     "facts(capsule, fact_type, decimal_type) -> ([(contract_id, facts, ordered)], last_position) or None."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_costs_sqlite", NULL, -1, methods};

PyMODINIT_FUNC PyInit__costs_sqlite(void) {
    PyDateTime_IMPORT;
    if (!PyDateTimeAPI) return NULL;
    return PyModule_Create(&module);
}
