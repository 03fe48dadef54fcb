/* NCCL's config fields, by argv[1]:
 *   single       1 process: a version-1 config (before blocking/commName/splitShare) still reads;
 *                bad values are invalid arguments; a non-blocking init that cannot finish
 *                (rank 1 of 2, rank 0 never comes) reports InProgress, then its timeout, through
 *                oxcclCommGetAsyncError and every call; one destroyed while initialising is gone.
 *   nonblocking  2 ranks, argv[2] a file path: rank 0 inits with blocking = 0 and commName
 *                "nb-ring"; while rank 1 has not joined (it waits for the file rank 0 creates
 *                after its checks), every call on the handle answers InProgress and the name
 *                reads back; rank 0 then polls oxcclCommGetAsyncError to Success and all-reduces;
 *                its error messages carry the name.
 *   split        2 ranks: a split with splitShare = 1 and commName "child" works and reads back
 *                its name; its own split (splitShare unset: inherited) works too. */
#define _POSIX_C_SOURCE 200809L
#include <fcntl.h>
#include <time.h>
#include <unistd.h>

#include "check.h"

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static void nap_ms(long ms) {
  struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&t, NULL);
}

/* Polls oxcclCommGetAsyncError until it leaves InProgress (deadline: `limit` seconds). */
static oxcclResult_t settle(oxcclComm_t c, double limit) {
  double t0 = now();
  oxcclResult_t st = oxcclInProgress;
  while (st == oxcclInProgress) {
    CHECK(oxcclCommGetAsyncError(c, &st));
    if (now() - t0 > limit) FAIL("still in progress after %.0f s", limit);
    if (st == oxcclInProgress) nap_ms(2);
  }
  return st;
}

static void name_is(oxcclComm_t c, const char *want) {
  const char *name = NULL;
  CHECK(oxcclCommName(c, &name));
  if (name == NULL || strcmp(name, want) != 0)
    FAIL("oxcclCommName gave \"%s\", expected \"%s\"", name ? name : "(null)", want);
}

static int single(void) {
  test_rank = 0;
  oxcclUniqueId id;
  /* Version 1: the fields after `algo` are not there (their memory here is garbage). */
  oxcclConfig_t v1 = OXCCL_CONFIG_INITIALIZER;
  v1.version = 1;
  v1.size = offsetof(oxcclConfig_t, blocking);
  v1.blocking = 12345;
  v1.commName = (const char *)(uintptr_t)1;
  oxcclComm_t c;
  CHECK(oxcclGetUniqueId(&id));
  CHECK(oxcclCommInitRankConfig(&c, 1, id, 0, &v1));
  name_is(c, "");
  int32_t v = 3;
  CHECK(oxcclAllReduce(&v, &v, 1, oxcclInt32, oxcclSum, c));
  ASSERT(v == 3);
  /* Persistent calls (oxccl*Init / oxcclStart / oxcclPersistentFree). */
  int pa = -1, pb = -1;
  float f[3] = {1, 2, 3}, g[3] = {0, 0, 0};
  CHECK(oxcclAllReduceInit(f, g, 3, oxcclFloat32, oxcclMax, c, &pa));
  CHECK(oxcclBroadcastInit(f, f, 3, oxcclFloat32, 0, c, &pb));
  ASSERT(pa >= 0 && pb >= 0 && pa != pb);
  CHECK(oxcclStart(pa));
  ASSERT(g[0] == 1 && g[1] == 2 && g[2] == 3);
  f[1] = 7;
  CHECK(oxcclStart(pa));
  ASSERT(g[1] == 7);
  CHECK(oxcclStart(pb));
  EXPECT(oxcclAllReduceInit(f, g, 3, oxcclFloat32, oxcclSum, c, NULL), oxcclInvalidArgument);
  EXPECT(oxcclAllReduceInit(f, f + 1, 2, oxcclFloat32, oxcclSum, c, &pb), oxcclInvalidArgument);
  EXPECT(oxcclBroadcastInit(f, f, 3, oxcclFloat32, 3, c, &pb), oxcclInvalidArgument);
  CHECK(oxcclPersistentFree(pb));
  EXPECT(oxcclStart(pb), oxcclInvalidArgument);
  EXPECT_MSG(NULL, "not a persistent call");
  EXPECT(oxcclPersistentFree(pb), oxcclInvalidArgument);
  EXPECT(oxcclStart(-1), oxcclInvalidArgument);
  CHECK(oxcclCommDestroy(c));
  /* Its communicator destroyed: the stored call says so, it does not crash. */
  EXPECT(oxcclStart(pa), oxcclInvalidArgument);
  EXPECT_MSG(NULL, "not a live communicator");
  CHECK(oxcclPersistentFree(pa));
  v1.size = offsetof(oxcclConfig_t, blocking) - 1;
  EXPECT(oxcclCommInitRankConfig(&c, 1, id, 0, &v1), oxcclInvalidArgument);
  /* Version 2 must be whole. */
  oxcclConfig_t cfg = OXCCL_CONFIG_INITIALIZER;
  ASSERT(cfg.version == 2 && cfg.blocking == OXCCL_CONFIG_UNDEF_INT && cfg.commName == NULL &&
         cfg.splitShare == OXCCL_CONFIG_UNDEF_INT);
  cfg.size = offsetof(oxcclConfig_t, blocking);
  EXPECT(oxcclCommInitRankConfig(&c, 1, id, 0, &cfg), oxcclInvalidArgument);
  EXPECT_MSG(NULL, "config->size");
  cfg.size = sizeof cfg;
  cfg.blocking = 2;
  EXPECT(oxcclCommInitRankConfig(&c, 1, id, 0, &cfg), oxcclInvalidArgument);
  EXPECT_MSG(NULL, "config->blocking");
  cfg.blocking = 1;
  cfg.splitShare = -1;
  EXPECT(oxcclCommInitRankConfig(&c, 1, id, 0, &cfg), oxcclInvalidArgument);
  EXPECT_MSG(NULL, "config->splitShare");
  EXPECT(oxcclCommName(NULL, NULL), oxcclInvalidArgument);

  /* Non-blocking, and it cannot finish: rank 0 of 2 never joins; 1.5 s timeout. */
  CHECK(oxcclGetUniqueId(&id));
  cfg.splitShare = OXCCL_CONFIG_UNDEF_INT;
  cfg.blocking = 0;
  cfg.timeoutMs = 1500;
  cfg.commName = "doomed";
  c = NULL;
  double t0 = now();
  EXPECT(oxcclCommInitRankConfig(&c, 2, id, 1, &cfg), oxcclInProgress);
  ASSERT(now() - t0 < 1.0);
  ASSERT(c != NULL);
  name_is(c, "doomed");
  oxcclResult_t st;
  CHECK(oxcclCommGetAsyncError(c, &st));
  ASSERT(st == oxcclInProgress);
  int n;
  EXPECT(oxcclCommCount(c, &n), oxcclInProgress);
  EXPECT_MSG(c, "still initialising");
  EXPECT_MSG(c, "doomed");
  st = settle(c, 30);
  ASSERT(st != oxcclSuccess && st != oxcclInvalidArgument);
  fprintf(stderr, "non-blocking init without its peer: %d after %.2f s: %s\n", (int)st,
          now() - t0, oxcclGetLastError(c));
  EXPECT(oxcclCommCount(c, &n), st);
  CHECK(oxcclCommDestroy(c));
  EXPECT(oxcclCommCount(c, &n), oxcclInvalidArgument);

  /* Destroyed (and another aborted) while initialising: gone at once. */
  oxcclComm_t d;
  CHECK(oxcclGetUniqueId(&id));
  EXPECT(oxcclCommInitRankConfig(&d, 2, id, 1, &cfg), oxcclInProgress);
  CHECK(oxcclCommDestroy(d));
  EXPECT(oxcclCommGetAsyncError(d, &st), oxcclInvalidArgument);
  CHECK(oxcclGetUniqueId(&id));
  EXPECT(oxcclCommInitRankConfig(&d, 2, id, 1, &cfg), oxcclInProgress);
  CHECK(oxcclCommAbort(d));
  EXPECT(oxcclCommAbort(d), oxcclInvalidArgument);
  printf("config single ok\n");
  return 0;
}

static int nonblocking(const char *flag) {
  const char *r = getenv("OXCCL_RANK");
  ASSERT(r != NULL);
  test_rank = atoi(r);
  oxcclConfig_t cfg = OXCCL_CONFIG_INITIALIZER;
  cfg.timeoutMs = 20000;
  oxcclComm_t c;
  if (test_rank == 1) {
    double t0 = now();
    while (access(flag, F_OK) != 0) {
      if (now() - t0 > 30) FAIL("rank 0 never created %s", flag);
      nap_ms(5);
    }
    CHECK(oxcclCommInitFromEnvConfig(&c, &cfg));
    name_is(c, "");
  } else {
    cfg.blocking = 0;
    cfg.commName = "nb-ring";
    EXPECT(oxcclCommInitFromEnvConfig(&c, &cfg), oxcclInProgress);
    oxcclResult_t st;
    CHECK(oxcclCommGetAsyncError(c, &st));
    ASSERT(st == oxcclInProgress);
    int32_t v = 1;
    EXPECT(oxcclAllReduce(&v, &v, 1, oxcclInt32, oxcclSum, c), oxcclInProgress);
    EXPECT(oxcclBarrier(c), oxcclInProgress);
    name_is(c, "nb-ring");
    int fd = open(flag, O_CREAT | O_WRONLY, 0600);
    ASSERT(fd >= 0);
    close(fd);
    ASSERT(settle(c, 30) == oxcclSuccess);
    name_is(c, "nb-ring");
    EXPECT(oxcclAllReduce(NULL, NULL, 1, oxcclInt32, oxcclSum, c), oxcclInvalidArgument);
    EXPECT_MSG(c, "[comm \"nb-ring\"]");
  }
  int32_t v = test_rank + 1;
  CHECK(oxcclAllReduce(&v, &v, 1, oxcclInt32, oxcclSum, c));
  ASSERT(v == 3);
  int rank;
  CHECK(oxcclCommUserRank(c, &rank));
  ASSERT(rank == test_rank);
  CHECK(oxcclCommDestroy(c));
  printf("rank %d: config nonblocking ok\n", test_rank);
  return 0;
}

static int split(void) {
  oxcclComm_t c;
  CHECK(oxcclCommInitFromEnv(&c));
  CHECK(oxcclCommUserRank(c, &test_rank));
  oxcclConfig_t cfg = OXCCL_CONFIG_INITIALIZER;
  cfg.splitShare = 1;
  cfg.commName = "child";
  oxcclComm_t child, grand;
  CHECK(oxcclCommSplit(c, 0, 1 - test_rank, &child, &cfg));
  name_is(child, "child");
  int cr;
  CHECK(oxcclCommUserRank(child, &cr));
  ASSERT(cr == 1 - test_rank);
  CHECK(oxcclCommSplit(child, 0, 0, &grand, NULL));
  name_is(grand, "");
  int32_t v = 2;
  CHECK(oxcclAllReduce(&v, &v, 1, oxcclInt32, oxcclSum, grand));
  ASSERT(v == 4);
  v = 1;
  CHECK(oxcclAllReduce(&v, &v, 1, oxcclInt32, oxcclSum, child));
  ASSERT(v == 2);
  CHECK(oxcclCommDestroy(grand));
  CHECK(oxcclCommDestroy(child));
  CHECK(oxcclCommDestroy(c));
  printf("rank %d: config split ok\n", test_rank);
  return 0;
}

int main(int argc, char **argv) {
  if (argc == 2 && strcmp(argv[1], "single") == 0) return single();
  if (argc == 3 && strcmp(argv[1], "nonblocking") == 0) return nonblocking(argv[2]);
  if (argc == 2 && strcmp(argv[1], "split") == 0) return split();
  FAIL("usage: config single | nonblocking FLAGFILE | split");
}
