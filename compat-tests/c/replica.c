/* One replica process of a 3-replica ring on 127.0.0.1, written against rsl_ffi.h only.
 *
 *   replica <index 0..2> <base port> <working dir> <events file> <requests>
 *
 * The state machine is an append-only log of request ids, saved and loaded through the
 * checkpoint streams. Requests are padded to 8 KiB and the log to 1 MiB, so the log rolls and
 * the secondaries save a checkpoint (the runtime takes checkpoints at log rolls; the
 * `save_state` flag set at request n/2 is honoured there too). The replica that becomes primary submits <requests> requests, each
 * with a heap cookie that must come back exactly once (execute or abort). Every replica
 * then serves a fast read, marks itself done in the working directory, waits for the
 * others, unloads, and finally rebuilds its state with rsl_replay (into <events>.replay).
 * Every callback is recorded with its arguments, one line each, in <events>.
 * Exit status: 0 on success, 1 on any failure (the reason on stderr). */
#include "rsl_ffi.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <threads.h>
#include <time.h>

#define MEMBERS 3
#define MAX_REQUESTS 10000
#define REQ_LEN 32      /* the part of a request the state keeps: its id */
#define REQ_PAD 8192    /* the size of a request on the wire, so the log rolls */
#define DEADLINE_SEC 90

/* The replicated state: requests in execution order. */
typedef struct state {
    char (*requests)[REQ_LEN];
    size_t count;
} state;

/* What a cookie points to: which request it was submitted with. */
typedef struct cookie {
    int id;
} cookie;

typedef struct machine {
    state st;
    FILE *events;
    mtx_t lock;               /* protocol-thread callbacks run concurrently with the others */
    atomic_bool primary;
    atomic_bool shut_down;
    atomic_int executed;      /* requests executed */
    atomic_int returned;      /* cookies returned (execute or abort) */
    atomic_int fast_reads;    /* fast-read cookies returned */
    atomic_int saved;         /* checkpoints saved */
    int save_at;              /* ask for a checkpoint after this many requests */
    int failures;
} machine;

/* `st` is the status of the ABI call that failed, whose cause this thread can still read; or
   NO_STATUS for a failure of this program's own. */
#define NO_STATUS INT32_MIN
static int fail(const char *what, rsl_status st) {
    if (st == NO_STATUS) {
        fprintf(stderr, "replica: %s failed\n", what);
    } else {
        fprintf(stderr, "replica: %s failed: status %d: %s\n", what, (int)st, rsl_last_error());
    }
    return 1;
}

static void record(machine *m, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void record(machine *m, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    mtx_lock(&m->lock);
    vfprintf(m->events, fmt, ap);
    fputc('\n', m->events);
    fflush(m->events);
    mtx_unlock(&m->lock);
    va_end(ap);
}

static uint64_t digest(const state *st) {
    return rsl_calculate_checksum(st->requests, st->count * REQ_LEN);
}

/* Keeps the request's id: the bytes before its '|'. */
static bool append(state *st, const void *request, size_t len) {
    const char *bar = memchr(request, '|', len);
    if (bar != NULL) len = (size_t)(bar - (const char *)request);
    if (len == 0 || len >= REQ_LEN || st->count >= MAX_REQUESTS) return false;
    memset(st->requests[st->count], 0, REQ_LEN);
    memcpy(st->requests[st->count], request, len);
    st->count++;
    return true;
}

/* ---- callbacks ---- */

static bool load_state(void *ctx, rsl_checkpoint_reader *reader) {
    machine *m = ctx;
    m->st.count = 0;
    if (reader == NULL) {
        record(m, "LoadState null");
        return true;
    }
    uint64_t size = rsl_checkpoint_reader_size(reader);
    uint64_t count = 0;
    uint32_t read = 0;
    if (size < sizeof count || rsl_checkpoint_reader_get_data(reader, &count, sizeof count, &read) != 0 || read != sizeof count ||
        count > MAX_REQUESTS || size != sizeof count + count * REQ_LEN) {
        record(m, "LoadState bad");
        return false;
    }
    for (uint64_t i = 0; i < count; i++) {
        /* Zero-copy reads may stop at a block boundary: loop. */
        size_t at = 0;
        while (at < REQ_LEN) {
            const void *p = NULL;
            uint32_t rc = rsl_checkpoint_reader_get_data_pointer(reader, &p, (uint32_t)(REQ_LEN - at), &read);
            if (rc != 0) {
                record(m, "LoadState error %u", rc);
                return false;
            }
            memcpy(m->st.requests[i] + at, p, read);
            at += read;
        }
    }
    m->st.count = (size_t)count;
    record(m, "LoadState reader size=%llu requests=%llu", (unsigned long long)size, (unsigned long long)count);
    return true;
}

static void execute_replicated_request(void *ctx, const void *request, size_t len, void *ck, bool *save_state) {
    machine *m = ctx;
    if (!append(&m->st, request, len)) {
        m->failures++;
        return;
    }
    int id = -1;
    if (ck != NULL) {
        id = ((cookie *)ck)->id;
        free(ck);
        atomic_fetch_add(&m->returned, 1);
    }
    record(m, "Execute %s cookie=%d len=%zu", m->st.requests[m->st.count - 1], id, len);
    if ((int)m->st.count == m->save_at) *save_state = true;
    atomic_fetch_add(&m->executed, 1);
}

static void execute_fast_read_request(void *ctx, const void *request, size_t len, void *ck) {
    machine *m = ctx;
    record(m, "FastRead %.*s cookie=%d count=%zu", (int)len, (const char *)request, ck ? ((cookie *)ck)->id : -1, m->st.count);
    free(ck);
    atomic_fetch_add(&m->fast_reads, 1);
}

static void abort_request(void *ctx, rsl_status status, void *ck) {
    machine *m = ctx;
    record(m, "Abort %d cookie=%d", (int)status, ck ? ((cookie *)ck)->id : -1);
    if (ck != NULL && ((cookie *)ck)->id >= 1000000) {
        atomic_fetch_add(&m->fast_reads, 1); /* a fast read's cookie */
    } else if (ck != NULL) {
        atomic_fetch_add(&m->returned, 1);
    }
    free(ck);
}

static void save_state(void *ctx, rsl_checkpoint_writer *w) {
    machine *m = ctx;
    uint64_t count = m->st.count;
    if (rsl_checkpoint_writer_write(w, &count, sizeof count) != 0 ||
        rsl_checkpoint_writer_write(w, m->st.requests, (uint32_t)(m->st.count * REQ_LEN)) != 0)
        m->failures++;
    record(m, "SaveState requests=%zu", m->st.count);
}

static void notify_status(void *ctx, bool is_primary) {
    machine *m = ctx;
    record(m, "NotifyStatus %d", is_primary ? 1 : 0);
    atomic_store(&m->primary, is_primary);
}

static void notify_configuration_changed(void *ctx, void *ck) {
    record(ctx, "NotifyConfigurationChanged cookie=%p", ck);
}

static void abort_change_configuration(void *ctx, rsl_status status, void *ck) {
    record(ctx, "AbortChangeConfiguration %d cookie=%p", (int)status, ck);
}

static void shut_down(void *ctx, rsl_status status) {
    machine *m = ctx;
    record(m, "ShutDown %d", (int)status);
    atomic_store(&m->shut_down, true);
}

static void state_saved(void *ctx, uint64_t seq, const char *file) {
    atomic_fetch_add(&((machine *)ctx)->saved, 1);
    record(ctx, "StateSaved seq=%llu file=%s", (unsigned long long)seq, strrchr(file, '/') ? strrchr(file, '/') + 1 : file);
}

static void log_line(int32_t level, const char *message) {
    if (level >= 3) fprintf(stderr, "rsl[%d]: %s\n", (int)level, message);
}

/* ---- helpers ---- */

static double now(void) {
    struct timespec ts;
    timespec_get(&ts, TIME_UTC);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Polls `cond` every 10 ms until it holds or the process deadline passes. */
static double deadline;
#define WAIT_UNTIL(cond)                                                            \
    do {                                                                            \
        while (!(cond)) {                                                           \
            if (now() > deadline) {                                                 \
                fprintf(stderr, "replica: timed out waiting for %s\n", #cond);     \
                return 1;                                                           \
            }                                                                       \
            thrd_sleep(&(struct timespec){.tv_nsec = 10 * 1000 * 1000}, NULL);     \
        }                                                                           \
    } while (0)

static bool exists(const char *path) {
    FILE *f = fopen(path, "r");
    if (f) fclose(f);
    return f != NULL;
}

static void node(rsl_node *n, int i, int base) {
    memset(n, 0, sizeof *n);
    snprintf(n->member_id, sizeof n->member_id, "%d", i + 1);
    const uint8_t ip[4] = {127, 0, 0, 1}; /* network byte order */
    memcpy(&n->ip, ip, sizeof ip);
    n->rsl_port = (uint16_t)(base + 2 * i);
    n->learn_port = 0; /* rsl_port + 1 */
}

static rsl_callbacks table(machine *m) {
    rsl_callbacks cb;
    memset(&cb, 0, sizeof cb);
    cb.context = m;
    cb.load_state = load_state;
    cb.execute_replicated_request = execute_replicated_request;
    cb.execute_fast_read_request = execute_fast_read_request;
    cb.abort_request = abort_request;
    cb.save_state = save_state;
    cb.notify_status = notify_status;
    cb.notify_configuration_changed = notify_configuration_changed;
    cb.abort_change_configuration = abort_change_configuration;
    cb.shut_down = shut_down;
    cb.state_saved = state_saved;
    return cb;
}

static int machine_open(machine *m, const char *events, int save_at) {
    memset(m, 0, sizeof *m);
    m->st.requests = calloc(MAX_REQUESTS, REQ_LEN);
    m->events = fopen(events, "w");
    m->save_at = save_at;
    if (m->st.requests == NULL || m->events == NULL || mtx_init(&m->lock, mtx_plain) != thrd_success) return 1;
    return 0;
}

static void machine_close(machine *m) {
    fclose(m->events);
    free(m->st.requests);
    mtx_destroy(&m->lock);
}

static int run(int index, int base, const char *dir, const char *events, int n) {
    deadline = now() + DEADLINE_SEC;
    rsl_status init = rsl_init(NULL, false, log_line);
    if (init != RSL_SUCCESS) return fail("rsl_init", init);

    rsl_config cfg;
    rsl_config_init(&cfg);
    snprintf(cfg.working_dir, sizeof cfg.working_dir, "%s", dir);
    cfg.election_delay_sec = 4; /* loaded CI machines: a late heartbeat must not start an election */
    cfg.heart_beat_interval_sec = 1;
    cfg.new_leader_grace_period_sec = 1;
    cfg.max_log_len_mb = 1;
    cfg.log_len_randomize = 0;
    rsl_node members[MEMBERS], me;
    for (int i = 0; i < MEMBERS; i++) node(&members[i], i, base);
    me = members[index];

    machine m;
    if (machine_open(&m, events, n / 2)) return fail("opening the state", NO_STATUS);
    rsl_callbacks cb = table(&m);
    rsl_replica *r = NULL;
    rsl_status st = rsl_replica_initialize(&cfg, &me, 6, true, &cb, members, MEMBERS, &r);
    if (st != RSL_SUCCESS) return fail("rsl_replica_initialize", st);

    /* One replica becomes primary and submits; every replica executes all n requests. */
    WAIT_UNTIL(atomic_load(&m.primary) || atomic_load(&m.executed) > 0);
    bool submitter = atomic_load(&m.primary);
    if (submitter) {
        char *req = malloc(REQ_PAD);
        if (req == NULL) return fail("malloc", NO_STATUS);
        for (int i = 0; i < n; i++) {
            int len = snprintf(req, REQ_PAD, "req-%d|", i);
            memset(req + len, 'a' + i % 26, REQ_PAD - (size_t)len);
            cookie *c = malloc(sizeof *c);
            c->id = i;
            st = rsl_replica_replicate_request(r, req, REQ_PAD, c); /* copied: req is reused */
            if (st != RSL_SUCCESS) {
                free(c); /* the cookie stays ours when the call fails */
                free(req);
                return fail("rsl_replica_replicate_request", st);
            }
        }
        free(req);
        WAIT_UNTIL(atomic_load(&m.returned) == n);
        if (atomic_load(&m.executed) != n) return fail("requests were aborted (the primary changed)", NO_STATUS);
    }
    WAIT_UNTIL(atomic_load(&m.executed) == n);
    /* Secondaries checkpoint when the log rolls; the primary leaves that to them. */
    if (!submitter) WAIT_UNTIL(atomic_load(&m.saved) >= 1);

    /* A fast read at the sequence number reached: it must see every request. */
    uint64_t seq = rsl_replica_current_sequence_number(r);
    cookie *fr = malloc(sizeof *fr);
    fr->id = 1000000 + index;
    st = rsl_replica_fast_read_request(r, seq, "count", 5, fr, 5000);
    if (st != RSL_SUCCESS) {
        free(fr);
        return fail("rsl_replica_fast_read_request", st);
    }
    WAIT_UNTIL(atomic_load(&m.fast_reads) == 1);

    /* Done: wait for the others before leaving, so nobody loses its quorum early. */
    char path[4200];
    snprintf(path, sizeof path, "%s/done.%d", dir, index);
    FILE *done = fopen(path, "w");
    if (done == NULL) return fail("writing the done marker", NO_STATUS);
    fclose(done);
    for (int i = 0; i < MEMBERS; i++) {
        snprintf(path, sizeof path, "%s/done.%d", dir, i);
        WAIT_UNTIL(exists(path));
    }
    uint64_t live = digest(&m.st);
    record(&m, "Final requests=%zu digest=%016llx", m.st.count, (unsigned long long)live);
    st = rsl_replica_unload(r);
    if (st != RSL_SUCCESS) return fail("rsl_replica_unload", st);
    if (!atomic_load(&m.shut_down)) return fail("ShutDown callback", NO_STATUS);
    if (rsl_replica_replicate_request(r, "x", 1, NULL) != RSL_SHUTTING_DOWN) return fail("a request after unload", NO_STATUS);
    rsl_replica_destroy(r);
    int failures = m.failures;
    machine_close(&m);

    /* Read-only replay of the data directory: the checkpoint, then the logs. */
    machine replay;
    char replay_events[4200];
    snprintf(replay_events, sizeof replay_events, "%s.replay", events);
    if (machine_open(&replay, replay_events, -1)) return fail("opening the replay state", NO_STATUS);
    rsl_callbacks rcb = table(&replay);
    uint64_t last = 0;
    st = rsl_replay(&cfg, me.member_id, 6, &rcb, UINT64_MAX, &last);
    if (st != RSL_SUCCESS) return fail("rsl_replay", st);
    record(&replay, "Final requests=%zu digest=%016llx last=%llu", replay.st.count, (unsigned long long)digest(&replay.st),
           (unsigned long long)last);
    bool same = digest(&replay.st) == live && replay.st.count == (size_t)n;
    failures += replay.failures;
    machine_close(&replay);
    if (!same) return fail("the replayed state", NO_STATUS);
    return failures == 0 ? 0 : fail("a callback", NO_STATUS);
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: %s <index 0..2> <base port> <working dir> <events file> <requests>\n", argv[0]);
        return 2;
    }
    int index = atoi(argv[1]), base = atoi(argv[2]), n = atoi(argv[5]);
    if (index < 0 || index >= MEMBERS || base <= 0 || base > 65000 || n <= 0 || n > MAX_REQUESTS) return 2;
    return run(index, base, argv[3], argv[4], n);
}
