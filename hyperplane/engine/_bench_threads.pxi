# Engines translating in parallel without I/O (csrc/hp_bench_threads.c): the engine-level
# scaling benchmark of the data-path workers (benchmarks/engine_threads.py) and the
# ThreadSanitizer check of tests/engine/test_threads.py. Included into _engine.pyx so it can
# reach Engine._e; not part of the public API (hyperplane/__init__.py does not export it).

cdef extern from "<stdlib.h>" nogil:
    void *aligned_alloc(size_t alignment, size_t size)

cdef extern from "hp_bench_threads.h" nogil:
    enum:
        HP_BT_MAX_THREADS
        HP_BT_MAX_BATCHES
    ctypedef struct hp_bt_batch:
        int dir
        const uint8_t *tmpl
        size_t size
        const uint32_t *offsets
        const uint32_t *lengths
        uint32_t n
        uint8_t *out
        uint8_t *verdicts
        uint8_t *reasons
    ctypedef struct hp_bt_job:
        hp_engine *e
        double now
        int cpu
        unsigned n_batches
        hp_bt_batch batch[4]
    ctypedef struct hp_bt_result:
        uint64_t passed
        uint64_t dropped
        double start
        double end
        double cpu
        int pinned
        int error
    int hp_bench_threads(const hp_bt_job *jobs, unsigned t, uint64_t rounds, hp_bt_result *res,
                         double *wall)


def translate_parallel(engines, batches, rounds, now=None, cpus=None):
    """Translate on ``len(engines)`` threads at once, one engine per thread, without the GIL.

    ``batches[i]`` is thread i's list of up to 4 batches, each ``(direction, buf, offsets,
    lengths, verdicts, reasons)`` as for ``Engine.translate_batch``. Every thread copies its
    batches once, then for ``rounds`` rounds copies each batch's packets into its working
    buffer and translates them in place (one batch after the other); after the last round
    ``buf``, ``verdicts`` and ``reasons`` hold that round's result. ``now``: the engine time
    of every round (default each engine's clock). ``cpus``: one CPU per thread to pin it to
    (-1: not pinned), or None.

    Returns ``{"wall_seconds": latest end - earliest start, "threads": [{"passed", "dropped",
    "seconds", "cpu_seconds", "pinned"}, ...]}`` (``seconds``: the thread's own wall time;
    ``cpu_seconds``: its CPU time; ``pinned``: 1 pinned, 0 not asked, < 0 -errno)."""
    engines = list(engines)
    batches = [list(b) for b in batches]
    cdef unsigned t = len(engines), i, k
    if not 1 <= t <= HP_BT_MAX_THREADS:
        raise ValueError(f"engines: 1 to {HP_BT_MAX_THREADS} engines, one per thread (got {t})")
    if len(batches) != t:
        raise ValueError(f"batches: one list per engine ({t}), got {len(batches)}")
    if len({id(e) for e in engines}) != t:
        raise ValueError("engines: the same engine twice; an engine is used by one thread")
    if cpus is not None:
        cpus = [int(c) for c in cpus]
        if len(cpus) != t:
            raise ValueError(f"cpus: one CPU per engine ({t}), got {len(cpus)}")
    if not isinstance(rounds, int) or isinstance(rounds, bool) or rounds < 1:
        raise ValueError(f"rounds {rounds!r}: an integer >= 1")
    cdef hp_bt_job *jobs = <hp_bt_job *>calloc(t, sizeof(hp_bt_job))
    cdef hp_bt_result *res = <hp_bt_result *>aligned_alloc(64, t * sizeof(hp_bt_result))
    cdef uint8_t[::1] out
    cdef uint8_t[::1] vo
    cdef uint8_t[::1] ro
    cdef const uint32_t[::1] off
    cdef const uint32_t[::1] ln
    cdef const uint8_t[::1] tm
    cdef hp_bt_batch *bb
    cdef Engine eng
    cdef double wall = 0.0
    cdef uint64_t nrounds = rounds
    cdef int rc = 0
    keep = []                      # every buffer the threads read or write, alive and unresizable
    entered = []
    if jobs == NULL or res == NULL:
        free(jobs)
        free(res)
        raise MemoryError("translate_parallel")
    try:
        memset(res, 0, t * sizeof(hp_bt_result))
        for i in range(t):
            if not isinstance(engines[i], Engine):
                raise TypeError(f"engines[{i}]: a compiled hyperplane Engine")
            eng = engines[i]
            if not 1 <= len(batches[i]) <= HP_BT_MAX_BATCHES:
                raise ValueError(f"batches[{i}]: 1 to {HP_BT_MAX_BATCHES} batches per thread")
            jobs[i].e = eng._e
            jobs[i].cpu = -1 if cpus is None else cpus[i]
            jobs[i].n_batches = len(batches[i])
            for k in range(jobs[i].n_batches):
                direction, buf, offsets, lengths, verdicts, reasons = batches[i][k]
                bb = &jobs[i].batch[k]
                bb.dir = int(Direction(direction))
                template = bytes(buf)
                tm = template
                try:
                    out = buf
                    vo = verdicts
                    ro = reasons
                except (BufferError, TypeError, ValueError):
                    raise ValueError(f"batches[{i}][{k}]: buf, verdicts and reasons must be "
                                     "writable byte buffers (bytearray)")
                off = _u32(offsets)
                ln = _u32(lengths)
                bb.n = off.shape[0]
                if bb.n == 0 or ln.shape[0] < bb.n or vo.shape[0] < bb.n or ro.shape[0] < bb.n:
                    raise ValueError(f"batches[{i}][{k}]: at least one packet, and lengths, "
                                     "verdicts and reasons need one slot per offset")
                for p in range(bb.n):
                    if <size_t>off[p] + ln[p] > <size_t>tm.shape[0]:
                        raise ValueError(f"batches[{i}][{k}] packet {p}: offset {off[p]} + "
                                         f"length {ln[p]} past the buffer end")
                bb.size = tm.shape[0]
                bb.tmpl = &tm[0]
                bb.out = &out[0]
                bb.offsets = &off[0]
                bb.lengths = &ln[0]
                bb.verdicts = &vo[0]
                bb.reasons = &ro[0]
                keep.append((template, tm, out, vo, ro, off, ln))
        for i in range(t):
            eng = engines[i]
            eng._enter()
            entered.append(eng)
            jobs[i].now = eng._advance(now)
        with nogil:
            rc = hp_bench_threads(jobs, t, nrounds, res, &wall)
        if rc:
            raise OSError(rc, f"translate_parallel: a thread could not be started: "
                              f"{_os.strerror(rc)}")
        threads = []
        for i in range(t):
            if res[i].error:
                raise MemoryError(f"translate_parallel: thread {i} could not allocate its buffers")
            threads.append(dict(passed=res[i].passed, dropped=res[i].dropped,
                                seconds=res[i].end - res[i].start, cpu_seconds=res[i].cpu,
                                pinned=res[i].pinned))
        return dict(wall_seconds=wall, threads=threads)
    finally:
        for eng in entered:
            eng._busy = False
        free(jobs)
        free(res)
