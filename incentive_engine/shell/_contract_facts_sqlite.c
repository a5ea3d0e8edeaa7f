/* The facts a contract keeps in lists - service costs, expansions, renewals - of an SQLite ledger, read in
 * C for a replay (`shell.store.Ledger.fold`).
 *
 * Why C: these are most of a ledger's rows (1,438,203 of the 1,872,844 of the benchmark's M ledger after
 * 58 months: 1,150,491 costs, 207,780 renewals, 79,932 expansions), and in a replay each of them cost a row
 * fetched into Python objects, its payload decoded, a date and a Decimal, and a step into its contract's
 * list (4-6 us a row, most of a replay's time). Here they are read and split on a connection of their
 * own, in a thread that does not hold the GIL, while Python folds the other rows; then each contract's
 * facts of each type come back as one list.
 *
 *   scan(path, after, upto) -> capsule | None
 *       every row of those three types with after < position <= upto, read in one transaction with the GIL
 *       released; None when it cannot be done here (see below)
 *   facts(capsule, fact_type, renewal_type, decimal_type) -> (groups, last_position) | None
 *       groups: [(type, contract_id, items, ordered), ...], one per contract and type in the order of the
 *       first such row, each list in position order: for `service.cost` fact_type((date, position,
 *       decimal_type(amount))), for `contract.expanded` fact_type((date, position, decimal_type(acv_delta))),
 *       for `contract.renewed` renewal_type(date, decimal_type(acv), term_months, position); `ordered` says
 *       the list is also in (effective, position) order (the order a contract keeps each list in)
 *
 * None sends the caller back to Python, which then reads these rows itself, so what a replay produces
 * never depends on this module (tests compare the two): when the file cannot be opened read-only, when
 * this connection does not see every row up to `upto` (the caller's snapshot holds rows it does not), when
 * a payload is not exactly the canonical JSON the engine writes for its type (`{"amount":"A","contract_id":
 * "C"}`, `{"acv_delta":"A","contract_id":"C"}`, `{"acv":"A","contract_id":"C","term_months":N}`: A and C
 * free of quotes and backslashes, N digits without a leading zero), or when a date, a text or an amount
 * does not convert.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <datetime.h>
#include <sqlite3.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* --- what a scan holds ----------------------------------------------------------------------------- */

enum { COST = 0, EXPANSION = 1, RENEWAL = 2, KINDS = 3 };
static const char *const TYPES[KINDS] = {"service.cost", "contract.expanded", "contract.renewed"};

typedef struct {
    sqlite3_int64 position;
    sqlite3_int64 term; /* a renewal's term_months */
    int32_t day;        /* YYYYMMDD, digits checked; the calendar is checked when the date is built */
    uint32_t group;     /* the group of its contract and type */
    size_t amount_off;  /* the amount's text in the arena */
    uint32_t amount_len;
} entry_t;

typedef struct {
    size_t key_off; /* the contract id's text in the arena */
    uint32_t key_len;
    int kind;
    uint32_t count, start; /* its rows: order[start .. start + count) */
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

static uint64_t key_hash(int kind, const char *p, size_t n) { /* FNV-1a over the type and the contract id */
    uint64_t h = (1469598103934665603ULL ^ (uint64_t)kind) * 1099511628211ULL;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)p[i]) * 1099511628211ULL;
    return h;
}

static int rehash(scan_t *s) {
    size_t n = s->nslots ? s->nslots * 2 : 1 << 16;
    uint32_t *slots = calloc(n, sizeof(uint32_t));
    if (!slots) return 0;
    for (size_t g = 0; g < s->ngroups; g++) {
        group_t *gr = &s->groups[g];
        size_t i = (size_t)key_hash(gr->kind, s->arena + gr->key_off, gr->key_len) & (n - 1);
        while (slots[i]) i = (i + 1) & (n - 1);
        slots[i] = (uint32_t)g + 1;
    }
    free(s->slots);
    s->slots = slots;
    s->nslots = n;
    return 1;
}

/* The group of a contract id and a type, created on its first row; -1 when out of memory. */
static long long group_of(scan_t *s, int kind, const char *key, size_t n) {
    if ((s->ngroups + 1) * 2 > s->nslots && !rehash(s)) return -1;
    size_t mask = s->nslots - 1, i = (size_t)key_hash(kind, key, n) & mask;
    for (;; i = (i + 1) & mask) {
        uint32_t g = s->slots[i];
        if (!g) break;
        group_t *gr = &s->groups[g - 1];
        if (gr->kind == kind && gr->key_len == n && memcmp(s->arena + gr->key_off, key, n) == 0) return g - 1;
    }
    if (s->ngroups >= UINT32_MAX - 1 || !grow((void **)&s->groups, &s->gcap, s->ngroups + 1, sizeof(group_t)))
        return -1;
    group_t *gr = &s->groups[s->ngroups];
    if (!arena_put(s, key, n, &gr->key_off)) return -1;
    gr->key_len = (uint32_t)n;
    gr->kind = kind;
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

/* `"name":"` at p (within end), the text up to the next quote after it into *v / *vn: 1, or 0 when not so
 * or when the text holds a backslash. */
static int text_field(const char **p, const char *end, const char *name, const char **v, size_t *vn) {
    size_t n = strlen(name);
    if ((size_t)(end - *p) < n || memcmp(*p, name, n) != 0) return 0;
    const char *start = *p + n, *q = memchr(start, '"', (size_t)(end - start));
    if (!q || memchr(start, '\\', (size_t)(q - start))) return 0;
    *v = start;
    *vn = (size_t)(q - start);
    *p = q + 1;
    return 1;
}

/* One row into the scan: 1, or 0 when the row is not of the shape handled here (or out of memory). */
static int add_row(scan_t *s, sqlite3_stmt *st) {
    if (sqlite3_column_type(st, 0) != SQLITE_INTEGER || sqlite3_column_type(st, 1) != SQLITE_TEXT ||
        sqlite3_column_type(st, 2) != SQLITE_TEXT || sqlite3_column_type(st, 3) != SQLITE_TEXT)
        return 0;
    const char *type = (const char *)sqlite3_column_text(st, 1);
    const unsigned char *eff = sqlite3_column_text(st, 2);
    const char *p = (const char *)sqlite3_column_text(st, 3);
    size_t n = (size_t)sqlite3_column_bytes(st, 3);
    int kind = -1, y, m, d;
    for (int k = 0; k < KINDS && type; k++)
        if (strcmp(type, TYPES[k]) == 0) kind = k;
    if (kind < 0 || !eff || !p || sqlite3_column_bytes(st, 2) != 10 || eff[4] != '-' || eff[7] != '-' ||
        !digits(eff, 4, &y) || !digits(eff + 5, 2, &m) || !digits(eff + 8, 2, &d))
        return 0;
    /* the canonical payload of the type, exactly: keys in sorted order, no whitespace */
    const char *end = p + n, *amount, *cid;
    size_t amount_n, cid_n;
    sqlite3_int64 term = 0;
    if (n < 2 || p[0] != '{' || end[-1] != '}') return 0;
    const char *at = p + 1;
    static const char *const AMOUNT_KEYS[KINDS] = {"\"amount\":\"", "\"acv_delta\":\"", "\"acv\":\""};
    if (!text_field(&at, end, AMOUNT_KEYS[kind], &amount, &amount_n) ||
        !text_field(&at, end, ",\"contract_id\":\"", &cid, &cid_n))
        return 0;
    if (kind == RENEWAL) {
        static const char key[] = ",\"term_months\":";
        if ((size_t)(end - at) < sizeof key - 1 || memcmp(at, key, sizeof key - 1) != 0) return 0;
        at += sizeof key - 1;
        const char *digits_end = end - 1;
        if (digits_end - at < 1 || digits_end - at > 9 || *at == '0') return 0;
        for (const char *c = at; c < digits_end; c++) {
            if (*c < '0' || *c > '9') return 0;
            term = term * 10 + (*c - '0');
        }
        at = digits_end;
    }
    if (at != end - 1) return 0; /* nothing between the last value and the closing brace */
    if (amount_n > UINT32_MAX || cid_n > UINT32_MAX) return 0;
    long long g = group_of(s, kind, cid, cid_n);
    if (g < 0 || !grow((void **)&s->entries, &s->cap, s->n + 1, sizeof(entry_t))) return 0;
    entry_t *e = &s->entries[s->n];
    if (!arena_put(s, amount, amount_n, &e->amount_off)) return 0;
    e->position = sqlite3_column_int64(st, 0);
    e->term = term;
    e->day = y * 10000 + m * 100 + d;
    e->group = (uint32_t)g;
    e->amount_len = (uint32_t)amount_n;
    s->groups[g].count++;
    s->n++;
    return 1;
}

static scan_t *scan_rows(const char *path, sqlite3_int64 after, sqlite3_int64 upto) {
    /* `+type`: a scan of the table in position order, not a search of the (type, effective) index */
    static const char sql[] =
        "SELECT position, type, effective, payload FROM ledger_event WHERE position > ?1 AND position <= ?2 "
        "AND +type IN ('service.cost', 'contract.expanded', 'contract.renewed') ORDER BY position";
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

static void capsule_free(PyObject *capsule) { scan_free(PyCapsule_GetPointer(capsule, "contract_facts_scan")); }

static PyObject *scan(PyObject *self, PyObject *args) {
    (void)self;
    const char *path;
    long long after, upto;
    if (!PyArg_ParseTuple(args, "sLL", &path, &after, &upto)) return NULL;
    scan_t *s;
    Py_BEGIN_ALLOW_THREADS
    s = scan_rows(path, after, upto);
    Py_END_ALLOW_THREADS
    if (!s) Py_RETURN_NONE;
    PyObject *capsule = PyCapsule_New(s, "contract_facts_scan", capsule_free);
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

/* What one row becomes: a fact (a cost, an expansion) or a renewal; NULL with an exception set. */
static PyObject *item(entry_t *e, int kind, PyObject *date, PyObject *amount, PyTypeObject *fact_type,
                      PyObject *renewal_type) {
    if (kind != RENEWAL) return fact(fact_type, date, e->position, amount);
    PyObject *term = PyLong_FromLongLong(e->term), *pos = PyLong_FromLongLong(e->position), *r = NULL;
    if (term && pos) {
        PyObject *argv[4] = {date, amount, term, pos};
        r = PyObject_Vectorcall(renewal_type, argv, 4, NULL);
    }
    Py_XDECREF(term);
    Py_XDECREF(pos);
    Py_DECREF(amount);
    return r;
}

typedef struct {
    PyTypeObject *fact_type;
    PyObject *renewal_type, *decimal, *types[KINDS];
    days_t days;
} build_t;

static PyObject *group_items(scan_t *s, group_t *g, build_t *b) {
    PyObject *list = PyList_New(g->count);
    if (!list) return NULL;
    int ordered = 1;
    int32_t last_day = INT32_MIN;
    for (uint32_t k = 0; k < g->count; k++) {
        entry_t *e = &s->entries[s->order[g->start + k]];
        if (e->day < last_day) ordered = 0; /* positions rise within a group: only the dates can fall */
        last_day = e->day;
        PyObject *date = day(&b->days, e->day), *it = NULL;
        PyObject *text = date ? PyUnicode_DecodeUTF8(s->arena + e->amount_off, e->amount_len, "strict") : NULL;
        PyObject *amount = text ? PyObject_CallOneArg(b->decimal, text) : NULL;
        Py_XDECREF(text);
        if (amount) it = item(e, g->kind, date, amount, b->fact_type, b->renewal_type);
        if (!it) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, k, it);
    }
    PyObject *cid = PyUnicode_DecodeUTF8(s->arena + g->key_off, g->key_len, "strict");
    if (!cid) {
        Py_DECREF(list);
        return NULL;
    }
    return Py_BuildValue("(ONNO)", b->types[g->kind], cid, list, ordered ? Py_True : Py_False);
}

static PyObject *facts(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *capsule;
    build_t b = {0};
    if (!PyArg_ParseTuple(args, "OO!OO", &capsule, &PyType_Type, &b.fact_type, &b.renewal_type, &b.decimal))
        return NULL;
    scan_t *s = PyCapsule_GetPointer(capsule, "contract_facts_scan");
    if (!s) return NULL;
    /* a fact is a plain tuple of three underneath (a named tuple): built here as tuple.__new__ builds it */
    PyTypeObject *ft = b.fact_type;
    if (!PyType_IsSubtype(ft, &PyTuple_Type) || ft->tp_basicsize != PyTuple_Type.tp_basicsize ||
        ft->tp_itemsize != PyTuple_Type.tp_itemsize || ft->tp_dictoffset != 0) {
        PyErr_SetString(PyExc_TypeError, "fact_type must be a tuple subclass without instance attributes");
        return NULL;
    }
    PyObject *groups = PyList_New((Py_ssize_t)s->ngroups);
    for (int k = 0; k < KINDS; k++)
        if (groups && !(b.types[k] = PyUnicode_FromString(TYPES[k]))) Py_CLEAR(groups);
    for (size_t g = 0; groups && g < s->ngroups; g++) {
        PyObject *one = group_items(s, &s->groups[g], &b);
        if (!one) {
            Py_CLEAR(groups);
            break;
        }
        PyList_SET_ITEM(groups, (Py_ssize_t)g, one);
    }
    sqlite3_int64 last = s->n ? s->entries[s->n - 1].position : 0;
    days_free(&b.days);
    for (int k = 0; k < KINDS; k++) Py_XDECREF(b.types[k]);
    if (!groups) { /* something did not convert: the caller reads these rows in Python, which says what */
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    return Py_BuildValue("(NL)", groups, (long long)last);
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS,
     "scan(path, after, upto) -> capsule or None: costs, expansions, renewals after < position <= upto (no GIL)."},
    {"facts", facts, METH_VARARGS,
     "facts(capsule, fact_type, renewal_type, decimal_type) -> ([(type, contract_id, items, ordered)], last) or None."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_contract_facts_sqlite", NULL, -1, methods};

PyMODINIT_FUNC PyInit__contract_facts_sqlite(void) {
    PyDateTime_IMPORT;
    if (!PyDateTimeAPI) return NULL;
    return PyModule_Create(&module);
}
