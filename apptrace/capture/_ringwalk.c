/* The walk from record header to record header of a BPF ring buffer, for apptrace.capture.ringbuf.

Capture's drain looks at every record's 8-byte header (its length, and whether the kernel is still writing
it) and at two words of its payload (plain data or not). In Python that loop is ~0.26 µs a record before
cache misses, and it was most of capture's CPU under small-record loads: h2c under h2load, ~0.5 µs of a
0.7 µs capture cost per record. Here it is a few ns; Python keeps everything else (copying runs out,
callbacks, the consumer position), so the two walks can be compared on the same bytes
(tests/test_ringbuf.py).

walk(data, start, mask, cons, prod, plain_type, type_word, flags_word, max_run) -> (segments, end)

  data        the mapping: the producer page, then the data area mapped twice in a row
  start       offset of the data area in data
  cons, prod  positions to walk between (they only grow; pos & mask is the offset in the data area)
  a record is plain when the low byte of payload word type_word is plain_type and word flags_word is 0

  segments    [(RUN, begin, end, records, payload_bytes) | (RECORD, begin, end, 1, payload_bytes)], in order:
              consecutive plain records make one RUN of at most max_run ring bytes (or one record, if
              bigger); any other committed record is a RECORD. Discarded records are skipped and end the
              run before them.
  end         where the walk stopped: prod, or the first record the kernel is still writing (BUSY).
*/
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#define RING_BUSY (1u << 31)
#define RING_DISCARD (1u << 30)
#define RING_LEN_MASK (RING_DISCARD - 1)
#define RING_HDR 8u

enum { SEG_RUN = 0, SEG_RECORD = 1 };

static int emit(PyObject *segments, int kind, uint64_t begin, uint64_t end, uint64_t records, uint64_t bytes)
{
    PyObject *seg = Py_BuildValue("(iKKKK)", kind, (unsigned long long)begin, (unsigned long long)end,
                                  (unsigned long long)records, (unsigned long long)bytes);
    if (seg == NULL)
        return -1;
    int rc = PyList_Append(segments, seg);
    Py_DECREF(seg);
    return rc;
}

static PyObject *walk(PyObject *self, PyObject *args)
{
    Py_buffer view;
    unsigned long long start, mask, cons, prod, max_run;
    unsigned int plain_type, type_word, flags_word;
    if (!PyArg_ParseTuple(args, "y*KKKKIIIK", &view, &start, &mask, &cons, &prod, &plain_type, &type_word,
                          &flags_word, &max_run))
        return NULL;
    const uint8_t *data = view.buf;
    uint64_t len = (uint64_t)view.len;
    /* The payload words looked at must lie within the smallest record that can hold them. */
    uint64_t words_end = RING_HDR + 4 * (uint64_t)(type_word > flags_word ? type_word : flags_word) + 4;
    PyObject *segments = PyList_New(0);
    if (segments == NULL)
        goto fail;
    uint64_t run_start = cons, run_records = 0, run_bytes = 0;
    while (cons < prod) {
        uint64_t off = start + (cons & mask);
        if (off + RING_HDR > len) {
            PyErr_Format(PyExc_ValueError, "ring position %llu is outside the mapping", (unsigned long long)cons);
            goto fail;
        }
        /* Acquire: the payload is read only after the header says the kernel is done with it. */
        uint32_t word = __atomic_load_n((const uint32_t *)(data + off), __ATOMIC_ACQUIRE);
        if (word & RING_BUSY)
            break; /* records commit out of order across CPUs, but are consumed in order */
        uint64_t payload = word & RING_LEN_MASK;
        uint64_t size = (payload + RING_HDR + 7) & ~7ull;
        if (off + RING_HDR + payload > len) {
            PyErr_Format(PyExc_ValueError, "a ring record of %llu bytes runs past the mapping",
                         (unsigned long long)payload);
            goto fail;
        }
        if (!(word & RING_DISCARD)) {
            const uint32_t *words = (const uint32_t *)(data + off + RING_HDR);
            int plain = payload + RING_HDR >= words_end && (words[type_word] & 0xff) == plain_type
                        && words[flags_word] == 0;
            if (plain) {
                if (run_records && cons - run_start + size > max_run) {
                    if (emit(segments, SEG_RUN, run_start, cons, run_records, run_bytes) < 0)
                        goto fail;
                    run_start = cons;
                    run_records = run_bytes = 0;
                }
                cons += size;
                run_records++;
                run_bytes += payload;
                continue;
            }
        }
        if (run_records && emit(segments, SEG_RUN, run_start, cons, run_records, run_bytes) < 0)
            goto fail;
        if (!(word & RING_DISCARD) && emit(segments, SEG_RECORD, cons, cons + size, 1, payload) < 0)
            goto fail;
        cons += size;
        run_start = cons;
        run_records = run_bytes = 0;
    }
    if (run_records && emit(segments, SEG_RUN, run_start, cons, run_records, run_bytes) < 0)
        goto fail;
    PyBuffer_Release(&view);
    PyObject *out = Py_BuildValue("(NK)", segments, (unsigned long long)cons);
    return out;
fail:
    Py_XDECREF(segments);
    PyBuffer_Release(&view);
    return NULL;
}

static PyMethodDef methods[] = {
    {"walk", walk, METH_VARARGS, "Walk ring records from cons to prod: (segments, end). See the module source."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_ringwalk", "The ring buffer's header walk, for apptrace.capture.ringbuf.", -1, methods,
};

PyMODINIT_FUNC PyInit__ringwalk(void)
{
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddIntConstant(m, "RUN", SEG_RUN) < 0 || PyModule_AddIntConstant(m, "RECORD", SEG_RECORD) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
