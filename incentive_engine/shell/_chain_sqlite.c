/* The hash chain of an SQLite ledger, checked in C: a fast first pass for `Ledger.verify`.
 *
 * Why C: recomputing the chain is per-row work (read ten columns, build the record text, two SHA-256),
 * and in Python the row objects alone cost more than the hashing (about 5 us a row for the ten columns
 * on the CI machine). Here a row costs a sqlite3_step, two digests and no Python objects.
 *
 * This module only answers "is every row good?" (and how many rows it read). The rules it applies are
 * the ones of `shell.store.Ledger._verify_rows` and `core.canonical` (record text, chain hash, content
 * hash, contiguous positions, consecutive stream versions), never looser: when it finds anything wrong
 * (or anything it does not handle, such as a column of an unexpected type), the Python verifier runs
 * and writes the report, so the messages an auditor sees have one source. A test checks both agree on
 * untouched and tampered ledgers.
 *
 *   verify(path, split=0) -> (ok: bool, rows: int)   or None when the database cannot be opened read-only
 *   chain(prev, rows) -> [hash, ...]                   the hashes an append writes (same record text, any database)
 *   chained_rows(...) -> (rows, recorded, last_hash)   an append's rows, versions, chain hashes and Recorded
 *   content_hashes(types, effectives, payloads)        deduplication's content hashes, for a batch
 *
 * With split > 0 and at least that many rows, two threads check the two halves of the positions, each on
 * its own read-only connection. That is sound because each row's hash is checked against the *stored*
 * hash of the row before it, so no link depends on the verdict on another; the second half starts from
 * the stored hash of the first half's last row, and stream versions are joined at the boundary (a
 * stream's first version in the second half must follow its last in the first). Rows appended after
 * the start (positions above the highest one seen then) are not read, as if one snapshot were taken then:
 * the rows below it cannot change (the table's triggers refuse UPDATE and DELETE).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* --- a growable byte buffer ------------------------------------------------------------------------ */

typedef struct {
    char *data;
    size_t len, cap;
} buf_t;

static int buf_reserve(buf_t *b, size_t extra) {
    if (b->len + extra <= b->cap) return 1;
    size_t cap = b->cap ? b->cap : 1024;
    while (cap < b->len + extra) cap *= 2;
    char *p = realloc(b->data, cap);
    if (!p) return 0;
    b->data = p;
    b->cap = cap;
    return 1;
}

static int buf_put(buf_t *b, const char *s, size_t n) {
    if (!buf_reserve(b, n)) return 0;
    memcpy(b->data + b->len, s, n);
    b->len += n;
    return 1;
}

#define PUT_LIT(b, lit) buf_put((b), (lit), sizeof(lit) - 1)

static int buf_int(buf_t *b, sqlite3_int64 v) { /* as Python's str(int) */
    char tmp[24], *p = tmp + sizeof tmp;
    uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    do {
        *--p = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0) *--p = '-';
    return buf_put(b, p, (size_t)(tmp + sizeof tmp - p));
}

/* A JSON string exactly as Python's json.encoder.encode_basestring writes it (json.dumps with
 * ensure_ascii=False): quotes, backslash and \b \f \n \r \t escaped by name, other characters below
 * 0x20 as \u00xx (lower-case hex), everything else (UTF-8 included) as it is. */
static int buf_json_str(buf_t *b, const unsigned char *s, size_t n) {
    static const char hex[] = "0123456789abcdef";
    if (!buf_reserve(b, n * 6 + 2)) return 0;
    char *o = b->data + b->len;
    *o++ = '"';
    for (size_t i = 0; i < n; i++) {
        unsigned char c = s[i];
        if (c >= 0x20 && c != '"' && c != '\\') {
            *o++ = (char)c;
            continue;
        }
        *o++ = '\\';
        switch (c) {
        case '"': *o++ = '"'; break;
        case '\\': *o++ = '\\'; break;
        case '\b': *o++ = 'b'; break;
        case '\f': *o++ = 'f'; break;
        case '\n': *o++ = 'n'; break;
        case '\r': *o++ = 'r'; break;
        case '\t': *o++ = 't'; break;
        default:
            *o++ = 'u'; *o++ = '0'; *o++ = '0';
            *o++ = hex[c >> 4]; *o++ = hex[c & 15];
        }
    }
    *o++ = '"';
    b->len = (size_t)(o - b->data);
    return 1;
}

/* --- stream versions: an open-addressing table from stream id to its last version ------------------ */

typedef struct {
    char *key; /* NULL: empty slot */
    size_t klen;
    sqlite3_int64 version; /* the last version seen */
    sqlite3_int64 first;   /* the first version seen (in a range that does not start at position 1) */
} slot_t;

typedef struct {
    slot_t *slots;
    size_t cap, used; /* cap: a power of two */
} table_t;

static uint64_t fnv1a(const unsigned char *s, size_t n) {
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) h = (h ^ s[i]) * 1099511628211ULL;
    return h;
}

static slot_t *table_find(table_t *t, const unsigned char *key, size_t n) {
    size_t mask = t->cap - 1, i = (size_t)fnv1a(key, n) & mask;
    for (;;) {
        slot_t *s = &t->slots[i];
        if (s->key == NULL || (s->klen == n && memcmp(s->key, key, n) == 0)) return s;
        i = (i + 1) & mask;
    }
}

static int table_grow(table_t *t) {
    size_t cap = t->cap ? t->cap * 2 : 1 << 16;
    slot_t *old = t->slots;
    size_t oldcap = t->cap;
    t->slots = calloc(cap, sizeof(slot_t));
    if (!t->slots) {
        t->slots = old;
        return 0;
    }
    t->cap = cap;
    for (size_t i = 0; i < oldcap; i++)
        if (old[i].key) *table_find(t, (unsigned char *)old[i].key, old[i].klen) = old[i];
    free(old);
    return 1;
}

static void table_free(table_t *t) {
    for (size_t i = 0; i < t->cap; i++) free(t->slots[i].key);
    free(t->slots);
}

/* --- the check ------------------------------------------------------------------------------------- */

enum { OK = 0, BAD = 1, FAILED = 2 }; /* FAILED: out of memory or an SQLite error */

static void to_hex(const unsigned char *d, char *out) {
    static const char hex[] = "0123456789abcdef";
    for (int i = 0; i < 32; i++) {
        out[2 * i] = hex[d[i] >> 4];
        out[2 * i + 1] = hex[d[i] & 15];
    }
}

static int digest_hex(EVP_MD_CTX *ctx, const EVP_MD *md, const char *a, size_t an, const char *b, size_t bn,
                      const char *c, size_t cn, char *hex_out) {
    unsigned char d[EVP_MAX_MD_SIZE];
    unsigned int dn = 0;
    if (!EVP_DigestInit_ex(ctx, md, NULL) || !EVP_DigestUpdate(ctx, a, an) || (bn && !EVP_DigestUpdate(ctx, b, bn)) ||
        (cn && !EVP_DigestUpdate(ctx, c, cn)) || !EVP_DigestFinal_ex(ctx, d, &dn) || dn != 32)
        return 0;
    to_hex(d, hex_out);
    return 1;
}

#define TEXT_OR_BAD(i) \
    if (sqlite3_column_type(st, (i)) != SQLITE_TEXT) { verdict = BAD; break; }

/* The stored hash of row `position` into prev: OK, BAD (no such row, or not 64 characters of text) or FAILED. */
static int stored_hash(sqlite3 *db, sqlite3_int64 position, char *prev) {
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db, "SELECT hash FROM ledger_event WHERE position = ?1", -1, &st, NULL) != SQLITE_OK)
        return FAILED;
    sqlite3_bind_int64(st, 1, position);
    int rc = sqlite3_step(st), verdict = BAD;
    if (rc == SQLITE_ROW && sqlite3_column_type(st, 0) == SQLITE_TEXT && sqlite3_column_bytes(st, 0) == 64) {
        memcpy(prev, sqlite3_column_text(st, 0), 64);
        verdict = OK;
    } else if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        verdict = FAILED;
    }
    sqlite3_finalize(st);
    return verdict;
}

/* Rows with positions lo..hi (hi < 0: to the end), in one read transaction: positions contiguous from lo
 * (and up to hi), hashes chained to the stored hash before each row, content hashes, and versions
 * consecutive within each stream (from 1 when lo is 1; else from the first version the range holds,
 * which the caller joins to the range before it). *rows: how many rows were read. */
static int check_rows(sqlite3 *db, sqlite3_int64 lo, sqlite3_int64 hi, table_t *streams_out, sqlite3_int64 *rows) {
    static const char sql[] =
        "SELECT position, stream_id, stream_version, type, effective, event_id, recorded_at, payload, "
        "content_hash, hash FROM ledger_event WHERE position >= ?1 AND position <= ?2 ORDER BY position";
    sqlite3_stmt *st = NULL;
    *rows = 0;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) return FAILED;
    /* from the very first row when lo is 1: a row moved to position 0 or below must be seen (and refused) */
    sqlite3_bind_int64(st, 1, lo == 1 ? INT64_MIN : lo);
    sqlite3_bind_int64(st, 2, hi < 0 ? INT64_MAX : hi);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    EVP_MD *md = EVP_MD_fetch(NULL, "SHA256", NULL);
    buf_t rec = {0}, ctext = {0};
    table_t streams = {0};
    char prev[64], hx[64];
    memset(prev, '0', 64); /* the genesis hash: 64 zeros */
    int verdict = (ctx && md && table_grow(&streams)) ? OK : FAILED;
    if (verdict == OK && lo > 1) verdict = stored_hash(db, lo - 1, prev);
    sqlite3_int64 expected = lo;
    int rc = SQLITE_ROW;
    while (verdict == OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (sqlite3_column_type(st, 0) != SQLITE_INTEGER || sqlite3_column_type(st, 2) != SQLITE_INTEGER) {
            verdict = BAD;
            break;
        }
        TEXT_OR_BAD(1) TEXT_OR_BAD(3) TEXT_OR_BAD(4) TEXT_OR_BAD(6) TEXT_OR_BAD(7) TEXT_OR_BAD(8) TEXT_OR_BAD(9)
        int eid_type = sqlite3_column_type(st, 5);
        if (eid_type != SQLITE_TEXT && eid_type != SQLITE_NULL) {
            verdict = BAD;
            break;
        }
        sqlite3_int64 position = sqlite3_column_int64(st, 0), version = sqlite3_column_int64(st, 2);
        if (position != expected) {
            verdict = BAD;
            break;
        }
        const unsigned char *stream = sqlite3_column_text(st, 1);
        size_t stream_n = (size_t)sqlite3_column_bytes(st, 1);
        const unsigned char *type = sqlite3_column_text(st, 3);
        size_t type_n = (size_t)sqlite3_column_bytes(st, 3);
        const unsigned char *eff = sqlite3_column_text(st, 4);
        size_t eff_n = (size_t)sqlite3_column_bytes(st, 4);
        const unsigned char *eid = sqlite3_column_text(st, 5);
        size_t eid_n = (size_t)sqlite3_column_bytes(st, 5);
        const unsigned char *at = sqlite3_column_text(st, 6);
        size_t at_n = (size_t)sqlite3_column_bytes(st, 6);
        const char *payload = (const char *)sqlite3_column_text(st, 7);
        size_t payload_n = (size_t)sqlite3_column_bytes(st, 7);
        const char *chash = (const char *)sqlite3_column_text(st, 8);
        size_t chash_n = (size_t)sqlite3_column_bytes(st, 8);
        const char *hash = (const char *)sqlite3_column_text(st, 9);
        size_t hash_n = (size_t)sqlite3_column_bytes(st, 9);
        if (!stream || !type || !eff || !at || !payload || !chash || !hash || (eid_type == SQLITE_TEXT && !eid)) {
            verdict = FAILED;
            break;
        }
        /* the record text: core.canonical.record_text */
        rec.len = 0;
        int built = PUT_LIT(&rec, "\n{\"effective\":") && buf_json_str(&rec, eff, eff_n) &&
                    PUT_LIT(&rec, ",\"event_id\":") &&
                    (eid_type == SQLITE_NULL ? PUT_LIT(&rec, "null") : buf_json_str(&rec, eid, eid_n)) &&
                    PUT_LIT(&rec, ",\"payload\":") && buf_put(&rec, payload, payload_n) &&
                    PUT_LIT(&rec, ",\"position\":") && buf_int(&rec, position) &&
                    PUT_LIT(&rec, ",\"recorded_at\":") && buf_json_str(&rec, at, at_n) &&
                    PUT_LIT(&rec, ",\"stream_id\":") && buf_json_str(&rec, stream, stream_n) &&
                    PUT_LIT(&rec, ",\"stream_version\":") && buf_int(&rec, version) &&
                    PUT_LIT(&rec, ",\"type\":") && buf_json_str(&rec, type, type_n) && PUT_LIT(&rec, "}");
        /* the content text: core.canonical.content_hash */
        ctext.len = 0;
        built = built && buf_put(&ctext, (const char *)type, type_n) && PUT_LIT(&ctext, "\n") &&
                buf_put(&ctext, (const char *)eff, eff_n) && PUT_LIT(&ctext, "\n");
        if (!built) {
            verdict = FAILED;
            break;
        }
        /* hash_n = SHA-256(hash_{n-1} + "\n" + record_n) */
        if (!digest_hex(ctx, md, prev, 64, rec.data, rec.len, NULL, 0, hx)) {
            verdict = FAILED;
            break;
        }
        if (hash_n != 64 || memcmp(hx, hash, 64) != 0) {
            verdict = BAD;
            break;
        }
        if (!digest_hex(ctx, md, ctext.data, ctext.len, payload, payload_n, NULL, 0, hx)) {
            verdict = FAILED;
            break;
        }
        if (chash_n != 64 || memcmp(hx, chash, 64) != 0) {
            verdict = BAD;
            break;
        }
        /* consecutive versions within each stream */
        if (streams.used * 2 >= streams.cap && !table_grow(&streams)) {
            verdict = FAILED;
            break;
        }
        slot_t *slot = table_find(&streams, stream, stream_n);
        sqlite3_int64 last = slot->key ? slot->version : 0;
        if ((slot->key || lo == 1) && version != last + 1) {
            verdict = BAD;
            break;
        }
        if (!slot->key) {
            slot->first = version;
            slot->key = malloc(stream_n ? stream_n : 1);
            if (!slot->key) {
                verdict = FAILED;
                break;
            }
            memcpy(slot->key, stream, stream_n);
            slot->klen = stream_n;
            streams.used++;
        }
        slot->version = version;
        memcpy(prev, hash, 64);
        expected++;
    }
    if (verdict == OK && rc != SQLITE_DONE) verdict = FAILED;
    if (verdict == OK && hi >= 0 && expected != hi + 1) verdict = BAD; /* rows missing at the end */
    *rows = expected - lo;
    sqlite3_finalize(st);
    EVP_MD_free(md);
    EVP_MD_CTX_free(ctx);
    free(rec.data);
    free(ctext.data);
    if (streams_out)
        *streams_out = streams;
    else
        table_free(&streams);
    return verdict;
}

/* --- one range on its own connection (a thread) ----------------------------------------------------- */

typedef struct {
    const char *path;
    sqlite3_int64 lo, hi, rows;
    table_t streams;
    int verdict;
} part_t;

static void *check_part(void *arg) {
    part_t *p = arg;
    sqlite3 *db = NULL;
    p->verdict = FAILED;
    if (sqlite3_open_v2(p->path, &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL) == SQLITE_OK) {
        sqlite3_busy_timeout(db, 30000);
        if (sqlite3_exec(db, "BEGIN", NULL, NULL, NULL) == SQLITE_OK) {
            p->verdict = check_rows(db, p->lo, p->hi, &p->streams, &p->rows);
            sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
        }
    }
    sqlite3_close(db);
    return NULL;
}

/* Both halves checked: does every stream's first version in the second follow its last in the first? */
static int joined(table_t *first, table_t *second) {
    for (size_t i = 0; i < second->cap; i++) {
        slot_t *s = &second->slots[i];
        if (!s->key) continue;
        slot_t *f = table_find(first, (unsigned char *)s->key, s->klen);
        if (s->first != (f->key ? f->version : 0) + 1) return BAD;
    }
    return OK;
}

static int check_split(const char *path, sqlite3_int64 last, sqlite3_int64 *rows) {
    part_t a = {path, 1, last / 2, 0, {0}, FAILED}, b = {path, last / 2 + 1, last, 0, {0}, FAILED};
    pthread_t thread;
    if (pthread_create(&thread, NULL, check_part, &b) != 0) return FAILED;
    check_part(&a);
    pthread_join(thread, NULL);
    int verdict = a.verdict > b.verdict ? a.verdict : b.verdict; /* FAILED > BAD > OK */
    if (verdict == OK) verdict = joined(&a.streams, &b.streams);
    *rows = a.rows + b.rows;
    table_free(&a.streams);
    table_free(&b.streams);
    return verdict;
}

static PyObject *verify(PyObject *self, PyObject *args) {
    const char *path;
    long long split = 0;
    if (!PyArg_ParseTuple(args, "s|L", &path, &split)) return NULL;
    sqlite3 *db = NULL;
    int verdict = FAILED;
    sqlite3_int64 rows = 0;
    Py_BEGIN_ALLOW_THREADS
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL) == SQLITE_OK) {
        sqlite3_busy_timeout(db, 30000);
        /* one read transaction: every row comes from one snapshot of the ledger */
        if (sqlite3_exec(db, "BEGIN", NULL, NULL, NULL) == SQLITE_OK) {
            sqlite3_int64 last = 0;
            sqlite3_stmt *st = NULL;
            int rc = sqlite3_prepare_v2(db, "SELECT MAX(position) FROM ledger_event", -1, &st, NULL);
            if (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) last = sqlite3_column_int64(st, 0);
            sqlite3_finalize(st);
            if (rc == SQLITE_ROW) {
                if (split > 0 && last >= split && last >= 2)
                    verdict = check_split(path, last, &rows); /* (this transaction holds the snapshot open) */
                else
                    verdict = check_rows(db, 1, -1, NULL, &rows);
            }
            sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
        }
    }
    sqlite3_close(db);
    Py_END_ALLOW_THREADS
    if (verdict == FAILED) Py_RETURN_NONE;
    return Py_BuildValue("(OL)", verdict == OK ? Py_True : Py_False, (long long)rows);
}

/* The appender's side of the same chain: chain(prev, rows) -> [hash, ...], where each row starts with the
 * eight fields of core.canonical.record_text (position, stream_id, stream_version, type, effective,
 * event_id or None, recorded_at, payload; more items are ignored) and each hash is core.canonical.chain_hash
 * of the one before (prev for the first) and that row's record text. The record text is built as the
 * checker above builds it from the stored columns, so what an append writes is what verify recomputes.
 * Text that is not valid UTF-8 (a lone surrogate) raises as Python's own .encode("utf-8") does. */
static int utf8_of(PyObject *row, Py_ssize_t i, const char **s, Py_ssize_t *n) {
    PyObject *v = PyTuple_GET_ITEM(row, i);
    if (!PyUnicode_Check(v)) {
        PyErr_Format(PyExc_TypeError, "chain: row item %zd must be str", i);
        return 0;
    }
    *s = PyUnicode_AsUTF8AndSize(v, n);
    return *s != NULL;
}

/* The record text of one row (core.canonical.record_text, with the chain hash's leading newline) into
 * rec, from its eight fields as UTF-8 (eid NULL for no event id); 0 when out of memory. */
static int put_record(buf_t *rec, long long position, const char *stream, Py_ssize_t stream_n, long long version,
                      const char *type, Py_ssize_t type_n, const char *eff, Py_ssize_t eff_n, const char *eid,
                      Py_ssize_t eid_n, const char *at, Py_ssize_t at_n, const char *payload, Py_ssize_t payload_n) {
    rec->len = 0;
    return PUT_LIT(rec, "\n{\"effective\":") && buf_json_str(rec, (const unsigned char *)eff, eff_n) &&
           PUT_LIT(rec, ",\"event_id\":") &&
           (eid ? buf_json_str(rec, (const unsigned char *)eid, eid_n) : PUT_LIT(rec, "null")) &&
           PUT_LIT(rec, ",\"payload\":") && buf_put(rec, payload, payload_n) && PUT_LIT(rec, ",\"position\":") &&
           buf_int(rec, position) && PUT_LIT(rec, ",\"recorded_at\":") &&
           buf_json_str(rec, (const unsigned char *)at, at_n) && PUT_LIT(rec, ",\"stream_id\":") &&
           buf_json_str(rec, (const unsigned char *)stream, stream_n) && PUT_LIT(rec, ",\"stream_version\":") &&
           buf_int(rec, version) && PUT_LIT(rec, ",\"type\":") &&
           buf_json_str(rec, (const unsigned char *)type, type_n) && PUT_LIT(rec, "}");
}

static int str_utf8(PyObject *v, const char *what, Py_ssize_t i, const char **s, Py_ssize_t *n) {
    if (!PyUnicode_Check(v)) {
        PyErr_Format(PyExc_TypeError, "%s of item %zd must be str", what, i);
        return 0;
    }
    *s = PyUnicode_AsUTF8AndSize(v, n);
    return *s != NULL;
}

/* A SHA-256 context for one call, freed by digest_end. */
typedef struct {
    EVP_MD_CTX *ctx;
    EVP_MD *md;
} digest_t;

static int digest_begin(digest_t *d, const char *who) {
    d->ctx = EVP_MD_CTX_new();
    d->md = EVP_MD_fetch(NULL, "SHA256", NULL);
    if (d->ctx && d->md) return 1;
    PyErr_Format(PyExc_MemoryError, "%s: no digest context", who);
    return 0;
}

static void digest_end(digest_t *d) {
    if (d->md) EVP_MD_free(d->md);
    if (d->ctx) EVP_MD_CTX_free(d->ctx);
}

static PyObject *chain(PyObject *self, PyObject *args) {
    const char *start;
    Py_ssize_t start_n;
    PyObject *rows;
    if (!PyArg_ParseTuple(args, "s#O", &start, &start_n, &rows)) return NULL;
    PyObject *seq = PySequence_Fast(rows, "chain: rows must be a sequence");
    if (!seq) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject *out = PyList_New(n);
    digest_t dg = {0};
    buf_t rec = {0};
    /* prev is taken as it is (a head's stored hash is 64 hex digits unless someone bypassed the store;
     * the Python chain hashes whatever it is given, and so does this) */
    char prev[64];
    const char *link = start;
    size_t link_n = (size_t)start_n;
    int ok = out && digest_begin(&dg, "chain");
    for (Py_ssize_t r = 0; ok && r < n; r++) {
        PyObject *row = PySequence_Fast_GET_ITEM(seq, r);
        if (!PyTuple_Check(row) || PyTuple_GET_SIZE(row) < 8) {
            PyErr_SetString(PyExc_TypeError, "chain: each row must be a tuple of at least 8 items");
            ok = 0;
            break;
        }
        long long position = PyLong_AsLongLong(PyTuple_GET_ITEM(row, 0));
        long long version = PyLong_AsLongLong(PyTuple_GET_ITEM(row, 2));
        if (PyErr_Occurred()) {
            ok = 0;
            break;
        }
        const char *stream, *type, *eff, *eid = NULL, *at, *payload;
        Py_ssize_t stream_n, type_n, eff_n, eid_n = 0, at_n, payload_n;
        int has_eid = PyTuple_GET_ITEM(row, 5) != Py_None;
        if (!utf8_of(row, 1, &stream, &stream_n) || !utf8_of(row, 3, &type, &type_n) ||
            !utf8_of(row, 4, &eff, &eff_n) || (has_eid && !utf8_of(row, 5, &eid, &eid_n)) ||
            !utf8_of(row, 6, &at, &at_n) || !utf8_of(row, 7, &payload, &payload_n)) {
            ok = 0;
            break;
        }
        char hx[64];
        if (!put_record(&rec, position, stream, stream_n, version, type, type_n, eff, eff_n, eid, eid_n, at, at_n,
                        payload, payload_n) ||
            !digest_hex(dg.ctx, dg.md, link, link_n, rec.data, rec.len, NULL, 0, hx)) {
            PyErr_SetString(PyExc_MemoryError, "chain: out of memory or digest failure");
            ok = 0;
            break;
        }
        memcpy(prev, hx, 64);
        link = prev;
        link_n = 64;
        PyObject *h = PyUnicode_FromStringAndSize(hx, 64);
        if (!h) {
            ok = 0;
            break;
        }
        PyList_SET_ITEM(out, r, h);
    }
    digest_end(&dg);
    free(rec.data);
    Py_DECREF(seq);
    if (!ok) {
        Py_XDECREF(out);
        return NULL;
    }
    return out;
}

/* chained_rows(events, streams, payloads, content_hashes, versions, position, prev, recorded_at,
 *              recorded_type, recorded_fields) -> (rows, recorded, last_hash)
 *
 * shell.store._chained_rows's loop, whole: for each event, the next position, its stream's next version
 * (``versions`` maps each stream to its current version and is moved on, as there), the ten-column row
 * (COLUMNS: the record's eight fields, the content hash, the chain hash) and its Recorded. The Recorded
 * is built as the dataclass's own __init__ builds it: a new instance whose five slots are set through
 * their descriptors (``recorded_fields``: the slot descriptors of position, recorded_at, stream_id,
 * stream_version, event), which is what object.__setattr__ does; without the Python frames (3.17 against
 * 1.15 us an event of the November M file). A test compares it with the Python loop on any batch. */
static PyObject *chained_rows(PyObject *self, PyObject *args) {
    PyObject *events, *streams, *payloads, *hashes, *versions, *rtype, *rfields, *at_obj;
    long long position;
    const char *start;
    Py_ssize_t start_n;
    if (!PyArg_ParseTuple(args, "OOOOO!Ls#UOO!", &events, &streams, &payloads, &hashes, &PyDict_Type, &versions,
                          &position, &start, &start_n, &at_obj, &rtype, &PyTuple_Type, &rfields))
        return NULL;
    if (!PyType_Check(rtype) || PyTuple_GET_SIZE(rfields) != 5) {
        PyErr_SetString(PyExc_TypeError, "chained_rows: recorded_type must be a type, recorded_fields 5 descriptors");
        return NULL;
    }
    for (int k = 0; k < 5; k++) {
        if (Py_TYPE(PyTuple_GET_ITEM(rfields, k))->tp_descr_set == NULL) {
            PyErr_SetString(PyExc_TypeError, "chained_rows: recorded_fields must be settable descriptors");
            return NULL;
        }
    }
    static PyObject *s_type, *s_effective, *s_event_id, *s_isoformat, *no_args;
    if (!s_type) {
        s_type = PyUnicode_InternFromString("type");
        s_effective = PyUnicode_InternFromString("effective");
        s_event_id = PyUnicode_InternFromString("event_id");
        s_isoformat = PyUnicode_InternFromString("isoformat");
        no_args = PyTuple_New(0);
        if (!s_type || !s_effective || !s_event_id || !s_isoformat || !no_args) return NULL;
    }
    PyObject *ev_seq = PySequence_Fast(events, "chained_rows: events must be a sequence");
    PyObject *st_seq = ev_seq ? PySequence_Fast(streams, "chained_rows: streams must be a sequence") : NULL;
    PyObject *pl_seq = st_seq ? PySequence_Fast(payloads, "chained_rows: payloads must be a sequence") : NULL;
    PyObject *ch_seq = pl_seq ? PySequence_Fast(hashes, "chained_rows: content_hashes must be a sequence") : NULL;
    PyObject *rows = NULL, *recs = NULL, *result = NULL;
    digest_t dg = {0};
    buf_t rec = {0};
    char prev[64];
    const char *link = start;
    size_t link_n = (size_t)start_n;
    if (!ch_seq) goto done;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(ev_seq);
    if (PySequence_Fast_GET_SIZE(st_seq) != n || PySequence_Fast_GET_SIZE(pl_seq) != n ||
        PySequence_Fast_GET_SIZE(ch_seq) != n) {
        PyErr_SetString(PyExc_ValueError, "chained_rows: the sequences differ in length");
        goto done;
    }
    const char *at;
    Py_ssize_t at_n;
    if (!(at = PyUnicode_AsUTF8AndSize(at_obj, &at_n))) goto done;
    rows = PyList_New(n);
    recs = PyList_New(n);
    if (!rows || !recs || !digest_begin(&dg, "chained_rows")) goto failed;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *ev = PySequence_Fast_GET_ITEM(ev_seq, i), *stream = PySequence_Fast_GET_ITEM(st_seq, i);
        PyObject *payload = PySequence_Fast_GET_ITEM(pl_seq, i), *ch = PySequence_Fast_GET_ITEM(ch_seq, i);
        PyObject *type = NULL, *day = NULL, *eff = NULL, *eid = NULL, *pos = NULL, *ver = NULL, *h = NULL;
        PyObject *row = NULL, *r = NULL;
        int ok = 0;
        const char *stream_s, *type_s, *eff_s, *eid_s = NULL, *payload_s;
        Py_ssize_t stream_n, type_n, eff_n, eid_n = 0, payload_n;
        if (!(type = PyObject_GetAttr(ev, s_type)) || !(day = PyObject_GetAttr(ev, s_effective)) ||
            !(eff = PyObject_CallMethodNoArgs(day, s_isoformat)) || !(eid = PyObject_GetAttr(ev, s_event_id)))
            goto item_done;
        if (!str_utf8(stream, "the stream", i, &stream_s, &stream_n) || !str_utf8(type, "the type", i, &type_s, &type_n) ||
            !str_utf8(eff, "the effective date", i, &eff_s, &eff_n) ||
            (eid != Py_None && !str_utf8(eid, "the event id", i, &eid_s, &eid_n)) ||
            !str_utf8(payload, "the payload", i, &payload_s, &payload_n) || !PyUnicode_Check(ch)) {
            if (!PyErr_Occurred()) PyErr_Format(PyExc_TypeError, "the content hash of item %zd must be str", i);
            goto item_done;
        }
        PyObject *current = PyDict_GetItemWithError(versions, stream); /* borrowed */
        if (!current) {
            if (!PyErr_Occurred()) PyErr_SetObject(PyExc_KeyError, stream);
            goto item_done;
        }
        long long version = PyLong_AsLongLong(current);
        if (version == -1 && PyErr_Occurred()) goto item_done;
        version += 1;
        position += 1;
        if (!(ver = PyLong_FromLongLong(version)) || PyDict_SetItem(versions, stream, ver) < 0 ||
            !(pos = PyLong_FromLongLong(position)))
            goto item_done;
        char hx[64];
        if (!put_record(&rec, position, stream_s, stream_n, version, type_s, type_n, eff_s, eff_n, eid_s, eid_n, at, at_n,
                        payload_s, payload_n) ||
            !digest_hex(dg.ctx, dg.md, link, link_n, rec.data, rec.len, NULL, 0, hx)) {
            PyErr_SetString(PyExc_MemoryError, "chained_rows: out of memory or digest failure");
            goto item_done;
        }
        memcpy(prev, hx, 64);
        link = prev;
        link_n = 64;
        if (!(h = PyUnicode_FromStringAndSize(hx, 64))) goto item_done;
        if (!(row = PyTuple_Pack(10, pos, stream, ver, type, eff, eid, at_obj, payload, ch, h))) goto item_done;
        if (!(r = ((PyTypeObject *)rtype)->tp_new((PyTypeObject *)rtype, no_args, NULL))) goto item_done;
        PyObject *values[5] = {pos, at_obj, stream, ver, ev};
        for (int k = 0; k < 5; k++) {
            PyObject *d = PyTuple_GET_ITEM(rfields, k);
            if (Py_TYPE(d)->tp_descr_set(d, r, values[k]) < 0) goto item_done;
        }
        PyList_SET_ITEM(rows, i, row);
        PyList_SET_ITEM(recs, i, r);
        row = r = NULL;
        ok = 1;
    item_done:
        Py_XDECREF(type);
        Py_XDECREF(day);
        Py_XDECREF(eff);
        Py_XDECREF(eid);
        Py_XDECREF(pos);
        Py_XDECREF(ver);
        Py_XDECREF(h);
        Py_XDECREF(row);
        Py_XDECREF(r);
        if (!ok) goto failed;
    }
    result = Py_BuildValue("(OOs#)", rows, recs, link, (Py_ssize_t)link_n);
failed:
    Py_XDECREF(rows);
    Py_XDECREF(recs);
done:
    digest_end(&dg);
    free(rec.data);
    Py_XDECREF(ch_seq);
    Py_XDECREF(pl_seq);
    Py_XDECREF(st_seq);
    Py_XDECREF(ev_seq);
    return result;
}

/* content_hashes(types, effectives, payloads): core.canonical.content_hash of each triple, i.e. the hex
 * SHA-256 of the UTF-8 text type + "\n" + effective + "\n" + payload, for a whole batch at once. */
static PyObject *content_hashes(PyObject *self, PyObject *args) {
    PyObject *types, *effs, *payloads;
    if (!PyArg_ParseTuple(args, "OOO", &types, &effs, &payloads)) return NULL;
    PyObject *ts = PySequence_Fast(types, "content_hashes: types must be a sequence");
    PyObject *es = ts ? PySequence_Fast(effs, "content_hashes: effectives must be a sequence") : NULL;
    PyObject *ps = es ? PySequence_Fast(payloads, "content_hashes: payloads must be a sequence") : NULL;
    PyObject *out = NULL;
    digest_t dg = {0};
    buf_t text = {0};
    if (!ps) goto done;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(ts);
    if (PySequence_Fast_GET_SIZE(es) != n || PySequence_Fast_GET_SIZE(ps) != n) {
        PyErr_SetString(PyExc_ValueError, "content_hashes: the three sequences differ in length");
        goto done;
    }
    if (!digest_begin(&dg, "content_hashes")) goto done;
    out = PyList_New(n);
    if (!out) goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *parts[3] = {PySequence_Fast_GET_ITEM(ts, i), PySequence_Fast_GET_ITEM(es, i),
                              PySequence_Fast_GET_ITEM(ps, i)};
        text.len = 0;
        for (int k = 0; k < 3; k++) {
            if (!PyUnicode_Check(parts[k])) {
                PyErr_Format(PyExc_TypeError, "content_hashes: item %zd of sequence %d must be str", i, k + 1);
                goto failed;
            }
            Py_ssize_t len;
            const char *utf8 = PyUnicode_AsUTF8AndSize(parts[k], &len);
            if (!utf8) goto failed;
            if ((k > 0 && !buf_put(&text, "\n", 1)) || !buf_put(&text, utf8, (size_t)len)) {
                PyErr_NoMemory();
                goto failed;
            }
        }
        char hx[64];
        if (!digest_hex(dg.ctx, dg.md, text.data, text.len, NULL, 0, NULL, 0, hx)) {
            PyErr_SetString(PyExc_RuntimeError, "content_hashes: digest failure");
            goto failed;
        }
        PyObject *h = PyUnicode_FromStringAndSize(hx, 64);
        if (!h) goto failed;
        PyList_SET_ITEM(out, i, h);
    }
    goto done;
failed:
    Py_CLEAR(out);
done:
    free(text.data);
    digest_end(&dg);
    Py_XDECREF(ps);
    Py_XDECREF(es);
    Py_XDECREF(ts);
    return out;
}

static PyMethodDef methods[] = {
    {"verify", verify, METH_VARARGS,
     "verify(path, split=0) -> (ok, rows) or None: the hash chain of an SQLite ledger (in two threads from split rows)."},
    {"chain", chain, METH_VARARGS,
     "chain(prev, rows) -> [hash, ...]: core.canonical.chain_hash over each row's record text, from prev."},
    {"chained_rows", chained_rows, METH_VARARGS,
     "chained_rows(events, streams, payloads, content_hashes, versions, position, prev, recorded_at, recorded_type, "
     "recorded_fields) -> (rows, recorded, last_hash): shell.store._chained_rows's loop."},
    {"content_hashes", content_hashes, METH_VARARGS,
     "content_hashes(types, effectives, payloads) -> [hash, ...]: core.canonical.content_hash of each."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_chain_sqlite", NULL, -1, methods};

PyMODINIT_FUNC PyInit__chain_sqlite(void) { return PyModule_Create(&module); }
