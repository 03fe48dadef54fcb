/* Error paths, in one process: NULLs, bad enums, bad counts, bad ids and configs, out-parameters
 * left alone on failure, messages that say what was wrong. Ends with a working 1-rank comm. */
#include "check.h"

#define SENTINEL ((oxcclComm_t)(uintptr_t)0x5a5a)

int main(void) {
  test_rank = 0;
  int v = -1;
  EXPECT(oxcclGetVersion(NULL), oxcclInvalidArgument);
  EXPECT_MSG(NULL, "version is NULL");
  CHECK(oxcclGetVersion(&v));
  ASSERT(v == OXCCL_VERSION_CODE);

  /* Result codes are NCCL 2.30's numbers (ncclResult_t), oxccl's own after NCCL's range. */
  _Static_assert(oxcclSuccess == 0, "ncclSuccess");
  _Static_assert(oxcclSystemError == 2, "ncclSystemError");
  _Static_assert(oxcclInternalError == 3, "ncclInternalError");
  _Static_assert(oxcclInvalidArgument == 4, "ncclInvalidArgument");
  _Static_assert(oxcclInvalidUsage == 5, "ncclInvalidUsage");
  _Static_assert(oxcclRemoteError == 6, "ncclRemoteError");
  _Static_assert(oxcclInProgress == 7, "ncclInProgress");
  _Static_assert(oxcclTimeout >= 8 && oxcclMismatch >= 8 && oxcclUnavailable >= 8 &&
                     oxcclAuthError >= 8,
                 "oxccl's own codes come after NCCL's");
  /* Strings for every code, and for codes that are not codes. */
  for (int c = -2; c < 20; c++) ASSERT(oxcclGetErrorString((oxcclResult_t)c) != NULL);
  ASSERT(strcmp(oxcclGetErrorString(oxcclSuccess), "no error") == 0);
  ASSERT(strstr(oxcclGetErrorString((oxcclResult_t)99), "unknown") != NULL);
  ASSERT(strstr(oxcclGetErrorString(oxcclRemoteError), "peer") != NULL);

  /* NULL communicators. */
  CHECK(oxcclCommDestroy(NULL));
  CHECK(oxcclCommAbort(NULL));
  int n = -7;
  EXPECT(oxcclCommCount(NULL, &n), oxcclInvalidArgument);
  ASSERT(n == -7);
  EXPECT_MSG(NULL, "comm is NULL");
  EXPECT(oxcclCommUserRank(NULL, &n), oxcclInvalidArgument);
  EXPECT(oxcclBarrier(NULL), oxcclInvalidArgument);
  float x[4] = {1, 2, 3, 4};
  EXPECT(oxcclAllReduce(x, x, 4, oxcclFloat32, oxcclSum, NULL), oxcclInvalidArgument);
  oxcclResult_t async = oxcclInProgress;
  EXPECT(oxcclCommGetAsyncError(NULL, &async), oxcclInvalidArgument);
  ASSERT(async == oxcclInProgress);
  ASSERT(strcmp(oxcclGetLastError(NULL), "") != 0);

  /* Unique ids. */
  oxcclUniqueId bad;
  memset(&bad, 0, sizeof bad);
  oxcclComm_t comm = SENTINEL;
  EXPECT(oxcclGetUniqueId(NULL), oxcclInvalidArgument);
  EXPECT(oxcclCommInitRank(&comm, 1, bad, 0), oxcclInvalidArgument);
  ASSERT(comm == SENTINEL);
  EXPECT_MSG(NULL, "unique id");
  char s[OXCCL_UNIQUE_ID_STRLEN];
  EXPECT(oxcclUniqueIdToString(&bad, s, sizeof s), oxcclInvalidArgument);
  EXPECT(oxcclUniqueIdFromString("not an id", &bad), oxcclInvalidArgument);
  EXPECT(oxcclUniqueIdFromString(NULL, &bad), oxcclInvalidArgument);

  oxcclUniqueId id, back;
  CHECK(oxcclGetUniqueId(&id));
  EXPECT(oxcclUniqueIdToString(&id, s, 8), oxcclInvalidArgument);
  EXPECT_MSG(NULL, "buf has 8 bytes");
  EXPECT(oxcclUniqueIdToString(&id, NULL, sizeof s), oxcclInvalidArgument);
  CHECK(oxcclUniqueIdToString(&id, s, sizeof s));
  ASSERT(strchr(s, '#') != NULL);
  CHECK(oxcclUniqueIdFromString(s, &back));
  ASSERT(memcmp(&id, &back, sizeof id) == 0);

  /* Bad ranks and configs: nothing is written to comm. */
  EXPECT(oxcclCommInitRank(NULL, 1, id, 0), oxcclInvalidArgument);
  EXPECT(oxcclCommInitRank(&comm, 2, id, 5), oxcclInvalidArgument);
  EXPECT(oxcclCommInitRank(&comm, 2, id, -1), oxcclInvalidArgument);
  EXPECT(oxcclCommInitRank(&comm, -3, id, 0), oxcclInvalidArgument);
  EXPECT(oxcclCommInitRank(&comm, 0, id, 0), oxcclInvalidArgument);
  ASSERT(comm == SENTINEL);
  oxcclConfig_t cfg = OXCCL_CONFIG_INITIALIZER;
  cfg.magic = 0;
  EXPECT(oxcclCommInitRankConfig(&comm, 1, id, 0, &cfg), oxcclInvalidArgument);
  EXPECT_MSG(NULL, "OXCCL_CONFIG_INITIALIZER");
  oxcclConfig_t small = OXCCL_CONFIG_INITIALIZER;
  small.size = 8;
  EXPECT(oxcclCommInitRankConfig(&comm, 1, id, 0, &small), oxcclInvalidArgument);
  oxcclConfig_t neg = OXCCL_CONFIG_INITIALIZER;
  neg.timeoutMs = -5;
  EXPECT(oxcclCommInitRankConfig(&comm, 1, id, 0, &neg), oxcclInvalidArgument);
  EXPECT_MSG(NULL, "timeoutMs");
  oxcclConfig_t tr = OXCCL_CONFIG_INITIALIZER;
  tr.transport = "carrier-pigeon";
  EXPECT(oxcclCommInitRankConfig(&comm, 1, id, 0, &tr), oxcclInvalidArgument);
  EXPECT_MSG(NULL, "carrier-pigeon");
  oxcclConfig_t ns = OXCCL_CONFIG_INITIALIZER;
  ns.nsocks = 1000;
  EXPECT(oxcclCommInitRankConfig(&comm, 1, id, 0, &ns), oxcclInvalidArgument);
  ASSERT(comm == SENTINEL);

  /* No launcher environment (the harness clears it). */
  EXPECT(oxcclCommInitFromEnv(&comm), oxcclInvalidUsage);
  EXPECT_MSG(NULL, "OXCCL_RANK");
  ASSERT(comm == SENTINEL);

  /* A working 1-rank communicator. */
  oxcclConfig_t good = OXCCL_CONFIG_INITIALIZER;
  good.timeoutMs = 10000;
  good.transport = "auto";
  CHECK(oxcclCommInitRankConfig(&comm, 1, id, 0, &good));
  ASSERT(comm != SENTINEL && comm != NULL);
  CHECK(oxcclCommCount(comm, &n));
  ASSERT(n == 1);
  CHECK(oxcclCommUserRank(comm, &n));
  ASSERT(n == 0);
  ASSERT(strcmp(oxcclGetLastError(comm), "") == 0);
  EXPECT(oxcclCommCount(comm, NULL), oxcclInvalidArgument);

  /* Bad arguments to a collective: errors on this comm, which stays usable. */
  EXPECT(oxcclAllReduce(x, x, 4, (oxcclDataType_t)42, oxcclSum, comm), oxcclInvalidArgument);
  EXPECT_MSG(comm, "datatype 42");
  EXPECT(oxcclAllReduce(x, x, 4, (oxcclDataType_t)-1, oxcclSum, comm), oxcclInvalidArgument);
  EXPECT(oxcclAllReduce(x, x, 4, oxcclFloat32, (oxcclRedOp_t)5, comm), oxcclInvalidArgument);
  EXPECT_MSG(comm, "op 5");
  EXPECT(oxcclAllReduce(x, x, (size_t)-1, oxcclFloat32, oxcclSum, comm), oxcclInvalidArgument);
  EXPECT_MSG(comm, "overflow");
  EXPECT(oxcclAllReduce(x, x, SIZE_MAX / 2, oxcclFloat64, oxcclSum, comm), oxcclInvalidArgument);
  EXPECT(oxcclAllReduce(NULL, x, 4, oxcclFloat32, oxcclSum, comm), oxcclInvalidArgument);
  EXPECT_MSG(comm, "sendbuff is NULL");
  EXPECT(oxcclAllReduce(x, NULL, 4, oxcclFloat32, oxcclSum, comm), oxcclInvalidArgument);
  EXPECT_MSG(comm, "recvbuff is NULL");
  EXPECT(oxcclAllReduce(x, x + 1, 3, oxcclFloat32, oxcclSum, comm), oxcclInvalidArgument);
  EXPECT_MSG(comm, "overlap");
  CHECK(oxcclCommGetAsyncError(comm, &async));
  ASSERT(async == oxcclSuccess);

  CHECK(oxcclAllReduce(NULL, NULL, 0, oxcclFloat32, oxcclSum, comm));
  CHECK(oxcclAllReduce(x, x, 4, oxcclFloat32, oxcclSum, comm));
  ASSERT(x[0] == 1 && x[3] == 4);
  float y[4];
  CHECK(oxcclAllReduce(x, y, 4, oxcclFloat32, oxcclAvg, comm));
  ASSERT(y[0] == 1 && y[3] == 4);
  CHECK(oxcclBarrier(comm));
  CHECK(oxcclCommDestroy(comm));
  /* A destroyed handle is recognised: errors, not crashes. */
  EXPECT(oxcclCommDestroy(comm), oxcclInvalidArgument);
  EXPECT_MSG(NULL, "not a live communicator");
  EXPECT(oxcclAllReduce(x, x, 4, oxcclFloat32, oxcclSum, comm), oxcclInvalidArgument);
  EXPECT(oxcclCommCount(SENTINEL, &n), oxcclInvalidArgument);
  EXPECT(oxcclCommAbort(SENTINEL), oxcclInvalidArgument);
  puts("errors ok");
  return 0;
}
