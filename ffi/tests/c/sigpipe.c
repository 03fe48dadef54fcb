/* A C host as training frameworks are: SIGPIPE at its default disposition (this program never
 * touches it, and asserts so), 4 ranks from the environment. argv[1] is the mode, argv[2] the
 * victim rank:
 *   kill   256 KiB all-reduces in a loop; the victim SIGKILLs itself in the middle of the loop.
 *          Every survivor must get an error (not a signal) naming the victim, see the
 *          communicator revoked, and keep running: it destroys the communicator and exits 0.
 *   close  the same, but the victim destroys its communicator early and exits cleanly.
 *   idle   50 all-reduces and a barrier, then every rank prints "idle" and polls; the harness
 *          SIGKILLs the victim once every rank has printed it. Survivors poll oxcclCommGetAsyncError (no call in flight) until it reports the loss,
 *          print how long that took, and their next call must fail at once naming the victim.
 *   abort  like idle, but the harness sends the victim SIGUSR1 and the victim calls
 *          oxcclCommAbort: a peer's abort must reach the idle survivors the same way.
 * Survivors print "survived <mode> ..." on stdout; the harness checks every survivor did. */
#include <signal.h>
#include <time.h>
#include <unistd.h>

#include "check.h"

#define COUNT (256 * 1024 / 4)
#define VICTIM_AT 20
#define LOOPS 100000

static double now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

static float buf[COUNT];
static volatile sig_atomic_t go_abort = 0;

static void on_usr1(int sig) {
  (void)sig;
  go_abort = 1;
}

int main(int argc, char **argv) {
  ASSERT(argc == 3);
  struct sigaction old;
  ASSERT(sigaction(SIGPIPE, NULL, &old) == 0);
  ASSERT(old.sa_handler == SIG_DFL); /* the point of the test: a default C host */
  const char *mode = argv[1];
  int victim = atoi(argv[2]);
  oxcclComm_t comm;
  oxcclConfig_t cfg = OXCCL_CONFIG_INITIALIZER;
  CHECK(oxcclCommInitFromEnvConfig(&comm, &cfg));
  CHECK(oxcclCommUserRank(comm, &test_rank));
  int n = 0;
  CHECK(oxcclCommCount(comm, &n));
  char name[32];
  snprintf(name, sizeof name, "rank %d", victim);
  int aborting = strcmp(mode, "abort") == 0;
  int idle = aborting || strcmp(mode, "idle") == 0;
  if (aborting) signal(SIGUSR1, on_usr1);
  size_t count = idle ? 1024 : COUNT;
  int iters = idle ? 50 : LOOPS;
  oxcclResult_t r = oxcclSuccess;
  int i = 0;
  for (; i < iters; i++) {
    for (size_t k = 0; k < count; k++) buf[k] = (float)(test_rank + 1);
    if (!idle && i == VICTIM_AT && test_rank == victim) {
      if (strcmp(mode, "kill") == 0) kill(getpid(), SIGKILL);
      CHECK(oxcclCommDestroy(comm));
      puts("closed early");
      return 0;
    }
    r = oxcclAllReduce(buf, buf, count, oxcclFloat32, oxcclSum, comm);
    if (r != oxcclSuccess) break;
    float want = (float)(n * (n + 1) / 2);
    if (buf[0] != want || buf[count - 1] != want)
      FAIL("iteration %d: got %g, want %g", i, (double)buf[0], (double)want);
  }
  if (!idle) {
    if (r == oxcclSuccess) FAIL("%d all-reduces succeeded without the victim", iters);
    if (r != oxcclRemoteError && r != oxcclTimeout)
      FAIL("iteration %d returned %d (%s): %s", i, (int)r, oxcclGetErrorString(r),
           oxcclGetLastError(comm));
    EXPECT_MSG(comm, name);
    oxcclResult_t async = oxcclSuccess;
    CHECK(oxcclCommGetAsyncError(comm, &async));
    ASSERT(async != oxcclSuccess);
    CHECK(oxcclCommDestroy(comm));
    printf("survived %s at iteration %d: %s\n", mode, i, oxcclGetErrorString(r));
    return 0;
  }
  CHECK(r);
  CHECK(oxcclBarrier(comm));
  puts("idle");
  fflush(stdout);
  /* Idle: nothing in flight. The loss must reach us within timeout + one period. */
  double t0 = now_ms();
  if (aborting && test_rank == victim) {
    while (!go_abort) {
      if (now_ms() - t0 > 60000.0) FAIL("no SIGUSR1 within 60 s");
      struct timespec tick = {0, 1000 * 1000};
      nanosleep(&tick, NULL);
    }
    CHECK(oxcclCommAbort(comm));
    puts("aborted");
    return 0;
  }
  double limit = 4.0 * (double)env_int("OXCCL_TIMEOUT_MS") + 5000.0;
  oxcclResult_t async = oxcclSuccess;
  while (async == oxcclSuccess) {
    if (now_ms() - t0 > limit) FAIL("no async error after %.0f ms idle", now_ms() - t0);
    struct timespec tick = {0, 5 * 1000 * 1000};
    nanosleep(&tick, NULL); /* polling interval, as a host's watchdog thread would */
    CHECK(oxcclCommGetAsyncError(comm, &async));
  }
  double seen = now_ms() - t0;
  double t1 = now_ms();
  r = oxcclAllReduce(buf, buf, count, oxcclFloat32, oxcclSum, comm);
  double call = now_ms() - t1;
  if (r == oxcclSuccess) FAIL("an all-reduce succeeded after the async error");
  EXPECT_MSG(comm, name);
  if (call > 1000.0) FAIL("the call after the async error took %.0f ms", call);
  CHECK(oxcclCommDestroy(comm));
  printf("survived %s: async error %d after %.0f ms idle, next call failed in %.1f ms\n",
         mode, (int)async, seen, call);
  return 0;
}
