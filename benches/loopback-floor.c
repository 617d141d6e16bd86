// The kernel's floor for waking N watchers over TCP loopback (BENCHMARKS.md,
// "Streamed watches"): one thread writes a 300-byte answer to each of N
// accepted sockets (a node's least work per wake-up), another epoll-reads
// them all (the watchers' least work). Prints, for five rounds, the time from
// the first write to the last read and the CPU time of each side. No Rust
// runtime, no HTTP: what any server pays on this machine's kernel.
//
//   cc -O2 -o target/loopback-floor benches/loopback-floor.c -lpthread
//   target/loopback-floor 9900    # 2 fds per watcher: stay under `ulimit -n`
//
// Loopback only (127.0.0.1:18999); bounded: five rounds, a 5 s read timeout.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int n;
static int *clients, *accepted;
static double first_write, last_read, reader_cpu;
static volatile int reader_ready;

static double now(clockid_t clock) {
    struct timespec t;
    clock_gettime(clock, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

// The watchers: wait for every socket to have its answer, read it.
static void *reader(void *unused) {
    (void)unused;
    int ep = epoll_create1(0);
    for (int i = 0; i < n; i++) {
        struct epoll_event e = {.events = EPOLLIN, .data.u32 = (unsigned)i};
        epoll_ctl(ep, EPOLL_CTL_ADD, clients[i], &e);
    }
    reader_ready = 1;
    double cpu = now(CLOCK_THREAD_CPUTIME_ID);
    struct epoll_event events[256];
    char buf[4096];
    for (int got = 0; got < n;) {
        int ready = epoll_wait(ep, events, 256, 5000);
        if (ready <= 0) {
            fprintf(stderr, "no answer within 5 s\n");
            exit(1);
        }
        for (int k = 0; k < ready; k++) {
            if (read(clients[events[k].data.u32], buf, sizeof buf) > 0) got++;
        }
    }
    last_read = now(CLOCK_MONOTONIC);
    reader_cpu = now(CLOCK_THREAD_CPUTIME_ID) - cpu;
    close(ep);
    return NULL;
}

int main(int argc, char **argv) {
    n = argc > 1 ? atoi(argv[1]) : 1000;
    if (n <= 0) {
        fprintf(stderr, "usage: %s WATCHERS\n", argv[0]);
        return 2;
    }
    clients = calloc(n, sizeof(int));
    accepted = calloc(n, sizeof(int));
    int one = 1;
    int listener = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(18999)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(listener, (void *)&addr, sizeof addr) || listen(listener, 4096)) {
        perror("127.0.0.1:18999");
        return 1;
    }
    for (int i = 0; i < n; i++) {
        clients[i] = socket(AF_INET, SOCK_STREAM, 0);
        if (clients[i] < 0 || connect(clients[i], (void *)&addr, sizeof addr)) {
            perror("connect (raise ulimit -n, or fewer watchers)");
            return 1;
        }
        accepted[i] = accept(listener, NULL, NULL);
        setsockopt(accepted[i], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    char answer[300];
    memset(answer, 'x', sizeof answer);
    for (int round = 0; round < 5; round++) {
        pthread_t thread;
        reader_ready = 0;
        pthread_create(&thread, NULL, reader, NULL);
        while (!reader_ready) usleep(1000);
        usleep(20000);
        double cpu = now(CLOCK_THREAD_CPUTIME_ID);
        first_write = now(CLOCK_MONOTONIC);
        for (int i = 0; i < n; i++) {
            if (write(accepted[i], answer, sizeof answer) != sizeof answer) {
                perror("write");
                return 1;
            }
        }
        double writer_cpu = now(CLOCK_THREAD_CPUTIME_ID) - cpu;
        double writes = now(CLOCK_MONOTONIC) - first_write;
        pthread_join(thread, NULL);
        printf("watchers %d: writes %.1f ms (writer CPU %.1f ms, %.2f us each), last read at %.1f ms, "
               "reader CPU %.1f ms (%.2f us each)\n",
               n, writes * 1e3, writer_cpu * 1e3, writer_cpu * 1e6 / n, (last_read - first_write) * 1e3,
               reader_cpu * 1e3, reader_cpu * 1e6 / n);
    }
    return 0;
}
