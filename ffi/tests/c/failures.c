/* Failures between ranks (argv[1]):
 *   lost      rank 1 exits after a first all-reduce; rank 0's next all-reduce must fail
 *             with oxcclRemoteError or oxcclTimeout naming rank 1, then the comm is revoked.
 *   mismatch  the ranks pass different counts: nobody may succeed or hang; exit 10 on
 *             oxcclMismatch, 11 on oxcclRemoteError (a peer that saw the mismatch first left). */
#include <unistd.h>

#include "check.h"

int main(int argc, char **argv) {
  ASSERT(argc == 2);
  oxcclComm_t comm;
  oxcclConfig_t cfg = OXCCL_CONFIG_INITIALIZER;
  cfg.timeoutMs = 10000;
  CHECK(oxcclCommInitFromEnvConfig(&comm, &cfg));
  CHECK(oxcclCommUserRank(comm, &test_rank));
  float x[64];
  for (int i = 0; i < 64; i++) x[i] = (float)i;
  if (strcmp(argv[1], "lost") == 0) {
    CHECK(oxcclAllReduce(x, x, 64, oxcclFloat32, oxcclSum, comm));
    if (test_rank == 1) _exit(0); /* gone without a word, as a crash */
    oxcclResult_t r = oxcclAllReduce(x, x, 64, oxcclFloat32, oxcclSum, comm);
    if (r != oxcclRemoteError && r != oxcclTimeout)
      FAIL("all-reduce with a lost peer returned %d (%s): %s", (int)r, oxcclGetErrorString(r),
           oxcclGetLastError(comm));
    EXPECT_MSG(comm, "rank 1");
    EXPECT_MSG(comm, "oxcclAllReduce");
    oxcclResult_t async = oxcclSuccess;
    CHECK(oxcclCommGetAsyncError(comm, &async));
    ASSERT(async == r);
    /* Revoked: the next call fails at once. */
    EXPECT(oxcclBarrier(comm), oxcclInvalidUsage);
    EXPECT_MSG(comm, "revoked");
    CHECK(oxcclCommGetAsyncError(comm, &async));
    ASSERT(async == r);
    CHECK(oxcclCommDestroy(comm));
    puts("lost ok");
    return 0;
  }
  if (strcmp(argv[1], "mismatch") == 0) {
    size_t count = test_rank == 0 ? 16 : 32;
    oxcclResult_t r = oxcclAllReduce(x, x, count, oxcclFloat32, oxcclSum, comm);
    fprintf(stderr, "[rank %d] mismatch -> %d: %s\n", test_rank, (int)r, oxcclGetLastError(comm));
    CHECK(oxcclCommDestroy(comm));
    if (r == oxcclMismatch) return 10;
    if (r == oxcclRemoteError) return 11;
    FAIL("mismatched all-reduce returned %d (%s)", (int)r, oxcclGetErrorString(r));
  }
  FAIL("unknown mode %s", argv[1]);
}
