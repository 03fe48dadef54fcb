/* The smallest complete oxccl program: every rank contributes its rank number, all-reduce sums.
 * Build and run 2 ranks (from the repository root):
 *   cargo build --release -p oxccl-ffi
 *   cc examples/c/allreduce.c -Iffi/include -Ltarget/release -loxccl -Wl,-rpath,"$PWD/target/release" -o allreduce
 *   PYTHONPATH=ffi/python python3 -m oxccl.run -n 2 ./allreduce
 */
#include <stdio.h>

#include "oxccl.h"

int main(void) {
  oxcclComm_t comm;
  if (oxcclCommInitFromEnv(&comm) != oxcclSuccess) { /* OXCCL_RANK, torchrun, srun, mpirun... */
    fprintf(stderr, "init: %s\n", oxcclGetLastError(NULL));
    return 1;
  }
  int rank, nranks;
  oxcclCommUserRank(comm, &rank);
  oxcclCommCount(comm, &nranks);

  float buf[4] = {(float)rank, (float)rank, (float)rank, (float)rank};
  oxcclResult_t r = oxcclAllReduce(buf, buf, 4, oxcclFloat32, oxcclSum, comm); /* in place */
  if (r != oxcclSuccess) {
    fprintf(stderr, "rank %d: %s\n", rank, oxcclGetLastError(comm));
    oxcclCommDestroy(comm);
    return 1;
  }
  printf("rank %d of %d: sum of ranks = %g (expected %d)\n", rank, nranks, buf[0],
         nranks * (nranks - 1) / 2);
  oxcclCommDestroy(comm);
  return buf[0] == nranks * (nranks - 1) / 2 ? 0 : 1;
}
