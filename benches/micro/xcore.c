// How fast one core moves data that another core has just touched, the limit on an all-reduce
// whose data changes on every call and fits in the caches. Two threads, pinned to the first two
// CPUs, take turns; each turn is timed on the second thread. Modes:
//   0  read a buffer nobody writes (clean lines, shared by both caches)
//   1  read a buffer the other thread wrote one float per line of in its turn (the lines sit
//      Modified in the other core's cache and must be fetched from it)
//   2  mine[i] += theirs[i], each thread with its own buffer in turn: what two ranks reducing
//      in place do (the peer's lines were just written by the peer, ours were just read by it)
//   3  mine[i] = theirs[i], the same way: the all-gather half of an in-place all-reduce
// oxccl-perf's out-of-place figures at cache-resident sizes read inputs that never change between
// calls (as nccl-tests' do), so they see mode 0; its in-place figures see modes 2 and 3.
//
// Build and run: benches/micro/run.sh (or: gcc -O2 -mavx2 -pthread xcore.c -o xcore;
// ./xcore KIB MODE). Prints GB/s of the other thread's data moved per second.
#define _GNU_SOURCE
#include <immintrin.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static size_t n_floats;
static float *bufs[2];
static _Atomic int turn;
static const int reps = 4000;
static int mode;
static double seconds[2];
static volatile float sink;

static void turn_of(int me, int r) {
    float *mine = bufs[me], *theirs = bufs[1 - me];
    size_t n = n_floats;
    __m256 acc = _mm256_setzero_ps();
    float lanes[8];
    switch (mode) {
    case 0:
    case 1:
        // Both threads read buffer 0; in mode 1 each then writes one float in every line.
        for (size_t i = 0; i < n; i += 8)
            acc = _mm256_add_ps(acc, _mm256_load_ps(bufs[0] + i));
        _mm256_storeu_ps(lanes, acc);
        sink += lanes[0];
        if (mode == 1)
            for (size_t i = 0; i < n; i += 16)
                bufs[0][i] = (float)r;
        break;
    case 2:
        for (size_t i = 0; i < n; i += 8)
            _mm256_store_ps(mine + i, _mm256_add_ps(_mm256_load_ps(mine + i), _mm256_load_ps(theirs + i)));
        break;
    default:
        for (size_t i = 0; i < n; i += 8)
            _mm256_store_ps(mine + i, _mm256_load_ps(theirs + i));
        break;
    }
}

static void *player(void *arg) {
    int me = (int)(long)arg;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(me, &set);
    pthread_setaffinity_np(pthread_self(), sizeof set, &set);
    double spent = 0;
    for (int r = 0; r < reps; r++) {
        while (atomic_load_explicit(&turn, memory_order_acquire) != me)
            _mm_pause();
        double t = now();
        turn_of(me, r);
        // (Mode 1's turn includes its one write per line, which is what dirties the next read.)
        spent += now() - t;
        atomic_store_explicit(&turn, 1 - me, memory_order_release);
    }
    seconds[me] = spent;
    return NULL;
}

int main(int argc, char **argv) {
    static const char *what[] = {
        "read clean lines", "read lines the other core just wrote",
        "mine += theirs, in turn", "mine = theirs, in turn"};
    size_t kib = argc > 1 ? (size_t)atoi(argv[1]) : 256;
    mode = argc > 2 ? atoi(argv[2]) : 1;
    if (mode < 0 || mode > 3)
        mode = 1;
    n_floats = kib * 1024 / sizeof(float);
    for (int i = 0; i < 2; i++) {
        bufs[i] = aligned_alloc(4096, n_floats * sizeof(float) + 4096);
        if (!bufs[i])
            return 1;
        memset(bufs[i], 0, n_floats * sizeof(float));
    }
    pthread_t a, b;
    pthread_create(&a, NULL, player, (void *)0);
    pthread_create(&b, NULL, player, (void *)1);
    pthread_join(a, NULL);
    pthread_join(b, NULL);
    printf("%5zu KiB, mode %d (%s): %.2f GB/s\n", kib, mode, what[mode],
           (double)n_floats * sizeof(float) * reps / seconds[1] / 1e9);
    return 0;
}
