/* Registered memory (oxcclMemAlloc / oxcclMemFree, as NCCL's ncclMemAlloc): 2 or 4 ranks over
 * shared memory all-reduce 8 MiB + 3 floats in and out of place on registered buffers, and with
 * only the receive buffer registered; every element is checked. Also the error paths: NULL
 * out-pointer, size 0, freeing an address oxcclMemAlloc did not return, freeing twice, and
 * oxcclMemFree(NULL) succeeding. */
#include "check.h"

#define COUNT ((size_t)(2u << 20) + 3u)

static void fill(float *x, int rank) {
  for (size_t i = 0; i < COUNT; i++) x[i] = (float)((i % 251) + (size_t)rank);
}

static void expect(const float *x, int nranks, const char *what) {
  for (size_t i = 0; i < COUNT; i++) {
    float want = (float)((i % 251) * (size_t)nranks) + (float)(nranks * (nranks - 1) / 2);
    if (x[i] != want) FAIL("%s: element %zu is %g, expected %g", what, i, x[i], want);
  }
}

int main(void) {
  oxcclComm_t comm;
  CHECK(oxcclCommInitFromEnv(&comm));
  int rank, n;
  CHECK(oxcclCommUserRank(comm, &rank));
  CHECK(oxcclCommCount(comm, &n));
  test_rank = rank;

  /* Error paths. */
  void *p = NULL;
  EXPECT(oxcclMemAlloc(NULL, 64), oxcclInvalidArgument);
  EXPECT(oxcclMemAlloc(&p, 0), oxcclInvalidArgument);
  ASSERT(p == NULL);
  CHECK(oxcclMemFree(NULL));
  int local = 0;
  EXPECT(oxcclMemFree(&local), oxcclInvalidArgument);
  EXPECT_MSG(NULL, "not allocated by oxcclMemAlloc");

  float *send = NULL, *recv = NULL;
  CHECK(oxcclMemAlloc((void **)&send, COUNT * sizeof(float)));
  CHECK(oxcclMemAlloc((void **)&recv, COUNT * sizeof(float)));
  ASSERT(send != NULL && recv != NULL && ((uintptr_t)send % 4096) == 0);
  for (size_t i = 0; i < COUNT; i++) ASSERT(send[i] == 0.0f);

  /* Out of place, both registered. */
  fill(send, rank);
  for (size_t i = 0; i < COUNT; i++) recv[i] = -1.0f;
  CHECK(oxcclAllReduce(send, recv, COUNT, oxcclFloat32, oxcclSum, comm));
  expect(recv, n, "out of place");
  /* In place on registered memory. */
  fill(recv, rank);
  CHECK(oxcclAllReduce(recv, recv, COUNT, oxcclFloat32, oxcclSum, comm));
  expect(recv, n, "in place");
  /* Only the receive buffer registered. */
  float *plain = malloc(COUNT * sizeof(float));
  ASSERT(plain != NULL);
  fill(plain, rank);
  CHECK(oxcclAllReduce(plain, recv, COUNT, oxcclFloat32, oxcclSum, comm));
  expect(recv, n, "plain send, registered receive");
  free(plain);

  CHECK(oxcclMemFree(send));
  EXPECT(oxcclMemFree(send), oxcclInvalidArgument);
  CHECK(oxcclMemFree(recv));
  CHECK(oxcclCommDestroy(comm));
  printf("memalloc ok\n");
  return 0;
}
