/* Communicator management, by argv[1]:
 *   split   4 ranks: colors rank%2 (rank 3: OXCCL_SPLIT_NOCOLOR), keys reversed.
 *   shrink  3 ranks: rank 2 dies after a first all-reduce; 0 and 1 see the failure, shrink to a
 *           2-rank communicator and all-reduce on it.
 *   heal    4 ranks: 0-2 revoke the communicator and shrink it excluding rank 3 (which only
 *           destroys its handle), then grow back to 4: rank 0 prints "JOIN <id>" and the harness
 *           starts `manage join <id> 3 4`, which joins as rank 3; all four all-reduce.
 *   abort   2 ranks: rank 0 aborts while another of its threads is blocked in an all-reduce that
 *           rank 1 has not joined; that call fails within seconds, not at the 60 s timeout, and
 *           rank 1's late all-reduce returns promptly too. */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <time.h>
#include <unistd.h>

#include "check.h"

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static oxcclComm_t comm;
static oxcclResult_t blocked_result = oxcclSuccess;
static double blocked_took;

static void *blocked(void *arg) {
  (void)arg;
  float x[16] = {0};
  double t = now();
  blocked_result = oxcclAllReduce(x, x, 16, oxcclFloat32, oxcclSum, comm);
  blocked_took = now() - t;
  return NULL;
}

/* The joiner of "heal": argv = join <id> <rank> <size>. */
static int join(char **argv) {
  oxcclUniqueId id;
  CHECK(oxcclUniqueIdFromString(argv[2], &id));
  int rank = atoi(argv[3]), size = atoi(argv[4]);
  test_rank = rank;
  oxcclComm_t big;
  CHECK(oxcclCommGrow(NULL, size, &id, rank, &big, NULL));
  int br, bn;
  CHECK(oxcclCommUserRank(big, &br));
  CHECK(oxcclCommCount(big, &bn));
  ASSERT(br == rank && bn == size);
  int32_t v = br + 1;
  CHECK(oxcclAllReduce(&v, &v, 1, oxcclInt32, oxcclSum, big));
  ASSERT(v == bn * (bn + 1) / 2);
  CHECK(oxcclCommDestroy(big));
  printf("rank %d: joined, heal ok\n", rank);
  return 0;
}

int main(int argc, char **argv) {
  if (argc == 5 && strcmp(argv[1], "join") == 0) return join(argv);
  ASSERT(argc == 2);
  oxcclConfig_t cfg = OXCCL_CONFIG_INITIALIZER;
  cfg.timeoutMs = strcmp(argv[1], "abort") == 0 ? 60000 : 10000;
  CHECK(oxcclCommInitFromEnvConfig(&comm, &cfg));
  int n;
  CHECK(oxcclCommUserRank(comm, &test_rank));
  CHECK(oxcclCommCount(comm, &n));

  if (strcmp(argv[1], "split") == 0) {
    ASSERT(n == 4);
    int color = test_rank == 3 ? OXCCL_SPLIT_NOCOLOR : test_rank % 2;
    oxcclComm_t sub = (oxcclComm_t)(uintptr_t)1;
    CHECK(oxcclCommSplit(comm, color, n - test_rank, &sub, NULL));
    if (test_rank == 3) {
      ASSERT(sub == NULL);
    } else {
      int sn, sr;
      CHECK(oxcclCommCount(sub, &sn));
      CHECK(oxcclCommUserRank(sub, &sr));
      /* color 0: old ranks {0, 2} ranked by key 4-r: 2 -> 0, 0 -> 1; color 1: {1} alone. */
      ASSERT(sn == (color == 0 ? 2 : 1));
      ASSERT(sr == (test_rank == 2 ? 0 : test_rank == 0 ? 1 : 0));
      int32_t v = test_rank;
      CHECK(oxcclAllReduce(&v, &v, 1, oxcclInt32, oxcclSum, sub));
      ASSERT(v == (color == 0 ? 2 : 1));
      CHECK(oxcclCommDestroy(sub));
    }
    EXPECT(oxcclCommSplit(comm, -5, 0, &sub, NULL), oxcclInvalidArgument);
    EXPECT(oxcclCommSplit(comm, 0, 0, NULL, NULL), oxcclInvalidArgument);
    CHECK(oxcclAllReduce(&n, &n, 1, oxcclInt32, oxcclMax, comm)); /* the parent still works */
    CHECK(oxcclCommDestroy(comm));
    printf("rank %d: split ok\n", test_rank);
    return 0;
  }

  if (strcmp(argv[1], "shrink") == 0) {
    ASSERT(n == 3);
    int32_t v = 1;
    CHECK(oxcclAllReduce(&v, &v, 1, oxcclInt32, oxcclSum, comm));
    ASSERT(v == 3);
    if (test_rank == 2) _exit(0);
    v = 1;
    oxcclResult_t r = oxcclAllReduce(&v, &v, 1, oxcclInt32, oxcclSum, comm);
    ASSERT(r == oxcclRemoteError || r == oxcclTimeout);
    oxcclComm_t small;
    CHECK(oxcclCommShrink(comm, &small));
    int sn, sr;
    CHECK(oxcclCommCount(small, &sn));
    CHECK(oxcclCommUserRank(small, &sr));
    ASSERT(sn == 2 && sr == test_rank);
    v = 5;
    CHECK(oxcclAllReduce(&v, &v, 1, oxcclInt32, oxcclSum, small));
    ASSERT(v == 10);
    CHECK(oxcclCommDestroy(small));
    CHECK(oxcclCommDestroy(comm));
    printf("rank %d: shrink ok\n", test_rank);
    return 0;
  }

  if (strcmp(argv[1], "heal") == 0) {
    ASSERT(n == 4);
    int32_t v = 1;
    CHECK(oxcclAllReduce(&v, &v, 1, oxcclInt32, oxcclSum, comm));
    ASSERT(v == 4);
    if (test_rank == 3) {
      CHECK(oxcclCommDestroy(comm));
      printf("rank 3: excluded, heal ok\n");
      return 0;
    }
    CHECK(oxcclCommRevoke(comm));
    EXPECT(oxcclAllReduce(&v, &v, 1, oxcclInt32, oxcclSum, comm), oxcclInvalidUsage);
    int excluded[1] = {3};
    EXPECT(oxcclCommShrinkExclude(comm, excluded, 1, NULL), oxcclInvalidArgument);
    oxcclComm_t small;
    CHECK(oxcclCommShrinkExclude(comm, excluded, 1, &small));
    int sn, sr;
    CHECK(oxcclCommCount(small, &sn));
    CHECK(oxcclCommUserRank(small, &sr));
    ASSERT(sn == 3 && sr == test_rank);
    oxcclUniqueId id;
    if (sr == 0) {
      CHECK(oxcclCommGetUniqueId(small, &id));
      char text[OXCCL_UNIQUE_ID_STRLEN];
      CHECK(oxcclUniqueIdToString(&id, text, sizeof text));
      printf("JOIN %s\n", text);
      fflush(stdout);
    } else {
      EXPECT(oxcclCommGetUniqueId(small, &id), oxcclInvalidUsage);
    }
    oxcclComm_t big;
    CHECK(oxcclCommGrow(small, 4, sr == 0 ? &id : NULL, -1, &big, NULL));
    int bn, br;
    CHECK(oxcclCommCount(big, &bn));
    CHECK(oxcclCommUserRank(big, &br));
    ASSERT(bn == 4 && br == sr);
    v = br + 1;
    CHECK(oxcclAllReduce(&v, &v, 1, oxcclInt32, oxcclSum, big));
    ASSERT(v == 10);
    CHECK(oxcclCommDestroy(big));
    CHECK(oxcclCommDestroy(small));
    CHECK(oxcclCommDestroy(comm));
    printf("rank %d: heal ok\n", test_rank);
    return 0;
  }

  if (strcmp(argv[1], "abort") == 0) {
    ASSERT(n == 2);
    if (test_rank == 0) {
      pthread_t t;
      ASSERT(pthread_create(&t, NULL, blocked, NULL) == 0);
      struct timespec half = {0, 500 * 1000 * 1000};
      nanosleep(&half, NULL);
      double t0 = now();
      CHECK(oxcclCommAbort(comm));
      double abort_took = now() - t0;
      ASSERT(pthread_join(t, NULL) == 0);
      fprintf(stderr, "abort took %.3f s; the blocked call returned %d after %.3f s: %s\n",
              abort_took, (int)blocked_result, blocked_took, oxcclGetLastError(NULL));
      ASSERT(blocked_result != oxcclSuccess);
      ASSERT(blocked_took < 10.0 && abort_took < 5.0);
      /* The handle is gone: using it is an error, not a crash. */
      EXPECT(oxcclBarrier(comm), oxcclInvalidArgument);
      EXPECT_MSG(NULL, "not a live communicator");
      EXPECT(oxcclCommDestroy(comm), oxcclInvalidArgument);
      printf("rank 0: abort ok\n");
      return 0;
    }
    sleep(2);
    float x[16] = {0};
    double t = now();
    oxcclResult_t r = oxcclAllReduce(x, x, 16, oxcclFloat32, oxcclSum, comm);
    fprintf(stderr, "rank 1: late all-reduce -> %d after %.3f s: %s\n", (int)r, now() - t,
            oxcclGetLastError(comm));
    /* It may even succeed (rank 0's thread sent its part before the abort); what matters is
     * that it returns, long before the 60 s timeout. */
    ASSERT(now() - t < 10.0);
    CHECK(oxcclCommDestroy(comm));
    printf("rank 1: abort ok\n");
    return 0;
  }
  FAIL("unknown mode %s", argv[1]);
}
