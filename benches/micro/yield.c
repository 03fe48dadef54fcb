// The cost of handing the CPU to another process and back: two processes ping-pong a counter
// in shared memory, each calling sched_yield while it waits. With both on CPU 0, every round
// trip is two context switches (what 4 ranks on 2 CPUs pay at least once per call per CPU);
// with the second on CPU 1 it is two cache-line transfers.
//
// Build and run: benches/micro/run.sh (or: gcc -O2 yield.c -o yield; ./yield CPU).
#define _GNU_SOURCE
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static void pin(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    sched_setaffinity(0, sizeof set, &set);
}

int main(int argc, char **argv) {
    const long rounds = 200000;
    int other = argc > 1 ? atoi(argv[1]) : 0;
    volatile long *word = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (word == MAP_FAILED)
        return 1;
    pid_t child = fork();
    if (child < 0)
        return 1;
    if (child == 0) {
        pin(other);
        for (long i = 0; i < rounds; i++) {
            while (*word != 2 * i + 1)
                sched_yield();
            *word = 2 * i + 2;
        }
        _exit(0);
    }
    pin(0);
    double t0 = now();
    for (long i = 0; i < rounds; i++) {
        *word = 2 * i + 1;
        while (*word != 2 * i + 2)
            sched_yield();
    }
    double t = now() - t0;
    waitpid(child, NULL, 0);
    printf("CPU 0 and CPU %d: round trip %.3f us\n", other, t / rounds * 1e6);
    return 0;
}
