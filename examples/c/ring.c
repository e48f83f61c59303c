/* A minimal replicated service on the C ABI (rsl_ffi.h): three replicas in this process form
 * a ring on 127.0.0.1 (every port from the OS), the primary replicates three requests, and
 * each replica prints the state it reached.
 *
 *   ring [working dir]      (default: a new directory under /tmp)
 *
 * Build against an installed rsl (cargo xtask install --prefix DIR):
 *   cc -std=c11 ring.c $(pkg-config --cflags --libs rsl) -o ring
 * Exit status 0 once every replica holds the three requests. */
#define _POSIX_C_SOURCE 200809L /* mkdtemp */

#include <rsl_ffi.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <threads.h>
#include <time.h>
#include <unistd.h>

#define MEMBERS 3
#define WORDS 3
#define WORD_LEN 32
#define DEADLINE_SEC 60

static const char *const REQUESTS[WORDS] = {"hello", "replicated", "world"};

/* One replica's state: the requests it executed, in order. The execute thread writes it;
 * main reads it only once `executed` says the writes are done. */
typedef struct service {
    char words[WORDS][WORD_LEN];
    atomic_int executed;
    atomic_bool primary;
} service;

static bool load_state(void *ctx, rsl_checkpoint_reader *reader) {
    service *s = ctx;
    memset(s->words, 0, sizeof s->words);
    atomic_store(&s->executed, 0);
    if (reader == NULL) return true; /* a new ring: empty state */
    uint32_t read = 0;
    int count = 0;
    if (rsl_checkpoint_reader_get_data(reader, &count, sizeof count, &read) != 0 || read != sizeof count || count < 0 ||
        count > WORDS)
        return false;
    if (rsl_checkpoint_reader_get_data(reader, s->words, (uint32_t)(count * WORD_LEN), &read) != 0) return false;
    atomic_store(&s->executed, count);
    return true;
}

static void execute(void *ctx, const void *request, size_t len, void *cookie, bool *save_state) {
    (void)cookie, (void)save_state;
    service *s = ctx;
    int n = atomic_load(&s->executed);
    if (n == WORDS) return; /* this example's state holds three words */
    snprintf(s->words[n], WORD_LEN, "%.*s", (int)len, (const char *)request);
    atomic_store(&s->executed, n + 1);
}

static void save_state(void *ctx, rsl_checkpoint_writer *writer) {
    service *s = ctx;
    int count = atomic_load(&s->executed);
    rsl_checkpoint_writer_write(writer, &count, sizeof count);
    rsl_checkpoint_writer_write(writer, s->words, (uint32_t)(count * WORD_LEN));
}

static void notify_status(void *ctx, bool is_primary) { atomic_store(&((service *)ctx)->primary, is_primary); }

static void fast_read(void *ctx, const void *request, size_t len, void *cookie) { (void)ctx, (void)request, (void)len, (void)cookie; }
static void abort_request(void *ctx, rsl_status status, void *cookie) {
    (void)ctx, (void)cookie;
    fprintf(stderr, "ring: a request was aborted: %s\n", rsl_status_message(status));
}
static void configuration_changed(void *ctx, void *cookie) { (void)ctx, (void)cookie; }
static void abort_change(void *ctx, rsl_status status, void *cookie) { (void)ctx, (void)status, (void)cookie; }
static void shut_down(void *ctx, rsl_status status) { (void)ctx, (void)status; }

/* Reports what failed, with the library's cause when an ABI call failed; returns 1. */
static int fail(const char *what) {
    const char *cause = rsl_last_error();
    fprintf(stderr, "ring: %s failed%s%s\n", what, *cause ? ": " : "", cause);
    return 1;
}

/* Six ports from the OS (Paxos and learn port of each member): all are held until all are
 * picked, so they differ; the replicas bind them right after. */
static bool pick_ports(uint16_t ports[2 * MEMBERS]) {
    int fds[2 * MEMBERS];
    bool ok = true;
    for (int i = 0; i < 2 * MEMBERS; i++) {
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK), .sin_port = 0};
        socklen_t len = sizeof a;
        fds[i] = socket(AF_INET, SOCK_STREAM, 0);
        ok = ok && fds[i] >= 0 && bind(fds[i], (struct sockaddr *)&a, sizeof a) == 0 &&
             getsockname(fds[i], (struct sockaddr *)&a, &len) == 0;
        ports[i] = ntohs(a.sin_port);
    }
    for (int i = 0; i < 2 * MEMBERS; i++)
        if (fds[i] >= 0) close(fds[i]);
    return ok;
}

/* Waits up to DEADLINE_SEC for `done(ring)`, checking every 10 ms. */
static bool wait_for(bool (*done)(service *), service *ring) {
    for (int i = 0; i < DEADLINE_SEC * 100; i++) {
        if (done(ring)) return true;
        thrd_sleep(&(struct timespec){.tv_nsec = 10 * 1000 * 1000}, NULL);
    }
    return done(ring);
}

static int primary_of(service *ring) {
    for (int i = 0; i < MEMBERS; i++)
        if (atomic_load(&ring[i].primary)) return i;
    return -1;
}
static bool has_primary(service *ring) { return primary_of(ring) >= 0; }
static bool all_executed(service *ring) {
    for (int i = 0; i < MEMBERS; i++)
        if (atomic_load(&ring[i].executed) < WORDS) return false;
    return true;
}

int main(int argc, char **argv) {
    char dir[256] = "/tmp/rsl-c-ring-XXXXXX";
    if (argc > 1) {
        snprintf(dir, sizeof dir, "%s", argv[1]);
    } else if (mkdtemp(dir) == NULL) {
        perror("ring: mkdtemp");
        return 1;
    }
    printf("rsl %d.%d.%d, files in %s\n", RSL_VERSION_MAJOR, RSL_VERSION_MINOR, RSL_VERSION_PATCH, dir);
    if (rsl_init(NULL, false, NULL) != RSL_SUCCESS) return fail("rsl_init");

    uint16_t ports[2 * MEMBERS];
    if (!pick_ports(ports)) return fail("picking ports");
    rsl_node members[MEMBERS];
    memset(members, 0, sizeof members);
    for (int i = 0; i < MEMBERS; i++) {
        snprintf(members[i].member_id, sizeof members[i].member_id, "%d", i + 1);
        members[i].ip = inet_addr("127.0.0.1");
        members[i].rsl_port = ports[2 * i];
        members[i].learn_port = ports[2 * i + 1];
    }
    rsl_config cfg;
    rsl_config_init(&cfg);
    snprintf(cfg.working_dir, sizeof cfg.working_dir, "%s", dir);
    cfg.heart_beat_interval_sec = 1; /* short timers: a local ring elects in a few seconds */
    cfg.election_delay_sec = 3;
    cfg.new_leader_grace_period_sec = 1;

    static service ring[MEMBERS];
    rsl_replica *replicas[MEMBERS] = {NULL};
    for (int i = 0; i < MEMBERS; i++) {
        rsl_callbacks cb;
        memset(&cb, 0, sizeof cb);
        cb.context = &ring[i];
        cb.load_state = load_state;
        cb.execute_replicated_request = execute;
        cb.execute_fast_read_request = fast_read;
        cb.abort_request = abort_request;
        cb.save_state = save_state;
        cb.notify_status = notify_status;
        cb.notify_configuration_changed = configuration_changed;
        cb.abort_change_configuration = abort_change;
        cb.shut_down = shut_down;
        rsl_status st = rsl_replica_initialize(&cfg, &members[i], 6, true, &cb, members, MEMBERS, &replicas[i]);
        if (st != RSL_SUCCESS) return fail("rsl_replica_initialize");
    }

    if (!wait_for(has_primary, ring)) return fail("electing a primary");
    int primary = primary_of(ring);
    printf("replica %d is primary\n", primary + 1);
    for (int w = 0; w < WORDS; w++) {
        rsl_status st = rsl_replica_replicate_request(replicas[primary], REQUESTS[w], strlen(REQUESTS[w]), NULL);
        if (st != RSL_SUCCESS) return fail("rsl_replica_replicate_request");
    }
    if (!wait_for(all_executed, ring)) return fail("executing the requests everywhere");

    for (int i = 0; i < MEMBERS; i++) {
        printf("replica %d (%s): state [%s, %s, %s]\n", i + 1, rsl_replica_is_primary(replicas[i]) ? "primary" : "secondary",
               ring[i].words[0], ring[i].words[1], ring[i].words[2]);
    }
    for (int i = 0; i < MEMBERS; i++) {
        rsl_replica_unload(replicas[i]);
        rsl_replica_destroy(replicas[i]);
    }
    return 0;
}
