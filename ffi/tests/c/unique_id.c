/* The NCCL way: rank 0 makes the unique id and prints it; the harness hands the text to the other
 * ranks as argv[1]. Usage: unique_id RANK NRANKS [ID]. Runs two communicators one after the
 * other and all-reduces with a config. */
#include "check.h"

int main(int argc, char **argv) {
  ASSERT(argc >= 3);
  test_rank = atoi(argv[1]);
  int nranks = atoi(argv[2]);
  oxcclUniqueId id;
  if (test_rank == 0) {
    char s[OXCCL_UNIQUE_ID_STRLEN];
    CHECK(oxcclGetUniqueId(&id));
    CHECK(oxcclUniqueIdToString(&id, s, sizeof s));
    printf("%s\n", s);
    fflush(stdout);
  } else {
    ASSERT(argc == 4);
    CHECK(oxcclUniqueIdFromString(argv[3], &id));
  }
  oxcclConfig_t cfg = OXCCL_CONFIG_INITIALIZER;
  cfg.timeoutMs = 20000;
  cfg.nsocks = 1;
  cfg.chunkBytes = 4096;
  cfg.algo = "ring";
  oxcclComm_t comm;
  CHECK(oxcclCommInitRankConfig(&comm, nranks, id, test_rank, &cfg));
  int n = 0, r = -1;
  CHECK(oxcclCommCount(comm, &n));
  CHECK(oxcclCommUserRank(comm, &r));
  ASSERT(n == nranks && r == test_rank);
  /* 100000 int64s through 4 KiB chunks: many pipelined slices. */
  size_t count = 100000;
  int64_t *v = (int64_t *)malloc(count * sizeof *v);
  ASSERT(v != NULL);
  for (size_t i = 0; i < count; i++) v[i] = (int64_t)i * (test_rank + 1);
  CHECK(oxcclAllReduce(v, v, count, oxcclInt64, oxcclSum, comm));
  int64_t k = (int64_t)nranks * (nranks + 1) / 2;
  for (size_t i = 0; i < count; i++)
    if (v[i] != (int64_t)i * k) FAIL("element %zu is %lld", i, (long long)v[i]);
  free(v);
  CHECK(oxcclBarrier(comm));
  CHECK(oxcclCommDestroy(comm));
  fprintf(stderr, "rank %d of %d: unique id ok\n", test_rank, nranks);
  return 0;
}
