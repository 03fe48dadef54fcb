/* Every collective of the C ABI, blocking and non-blocking, in place and out of place, plus
 * point-to-point in groups and a group over two communicators; results checked on every rank.
 * Ranks come from the environment. */
#include "check.h"

static int n;

/* Rank r's element i. */
static int32_t val(int r, size_t i) { return (int32_t)(r * 1000 + (int)i); }

static void fill(int32_t *b, size_t count, int r, size_t base) {
  for (size_t i = 0; i < count; i++) b[i] = val(r, base + i);
}

static int32_t *alloc(size_t count) {
  int32_t *p = (int32_t *)malloc((count ? count : 1) * sizeof *p);
  ASSERT(p != NULL);
  for (size_t i = 0; i < count; i++) p[i] = -1;
  return p;
}

static void broadcast_reduce(oxcclComm_t comm, size_t c) {
  for (int root = 0; root < n; root++) {
    int32_t *s = alloc(c), *r = alloc(c);
    fill(s, c, test_rank, 0);
    /* Non-roots pass NULL sendbuff: NCCL's convention. */
    CHECK(oxcclBroadcast(test_rank == root ? s : NULL, r, c, oxcclInt32, root, comm));
    for (size_t i = 0; i < c; i++) ASSERT(r[i] == val(root, i));
    fill(r, c, test_rank, 0);
    CHECK(oxcclBroadcast(r, r, c, oxcclInt32, root, comm)); /* in place */
    for (size_t i = 0; i < c; i++) ASSERT(r[i] == val(root, i));

    for (size_t i = 0; i < c; i++) r[i] = -1;
    CHECK(oxcclReduce(s, test_rank == root ? r : NULL, c, oxcclInt32, oxcclSum, root, comm));
    if (test_rank == root)
      for (size_t i = 0; i < c; i++) {
        int64_t want = 0;
        for (int q = 0; q < n; q++) want += val(q, i);
        ASSERT(r[i] == want);
      }
    CHECK(oxcclReduce(s, s, c, oxcclInt32, oxcclMax, root, comm)); /* in place */
    if (test_rank == root)
      for (size_t i = 0; i < c; i++) ASSERT(s[i] == val(n - 1, i));
    free(s);
    free(r);
  }
}

static void gathers(oxcclComm_t comm, size_t c) {
  size_t t = c * (size_t)n;
  int32_t *s = alloc(c), *r = alloc(t);
  fill(s, c, test_rank, 0);
  CHECK(oxcclAllGather(s, r, c, oxcclInt32, comm));
  for (int q = 0; q < n; q++)
    for (size_t i = 0; i < c; i++) ASSERT(r[q * c + i] == val(q, i));
  /* In place: this rank's block is already in recvbuff. */
  for (size_t i = 0; i < t; i++) r[i] = -1;
  fill(r + test_rank * c, c, test_rank, 0);
  CHECK(oxcclAllGather(r + test_rank * c, r, c, oxcclInt32, comm));
  for (int q = 0; q < n; q++)
    for (size_t i = 0; i < c; i++) ASSERT(r[q * c + i] == val(q, i));

  for (int root = 0; root < n; root++) {
    for (size_t i = 0; i < t; i++) r[i] = -1;
    CHECK(oxcclGather(s, test_rank == root ? r : NULL, c, oxcclInt32, root, comm));
    if (test_rank == root)
      for (int q = 0; q < n; q++)
        for (size_t i = 0; i < c; i++) ASSERT(r[q * c + i] == val(q, i));
    /* Scatter back what the root gathered (in place on the root). */
    int32_t *mine = alloc(c);
    CHECK(oxcclScatter(test_rank == root ? r : NULL, mine, c, oxcclInt32, root, comm));
    for (size_t i = 0; i < c; i++) ASSERT(mine[i] == val(test_rank, i));
    if (test_rank == root) {
      CHECK(oxcclScatter(r, r + root * c, c, oxcclInt32, root, comm));
      for (size_t i = 0; i < c; i++) ASSERT(r[root * c + i] == val(root, i));
      /* Gather in place on the root. */
      CHECK(oxcclGather(r + root * c, r, c, oxcclInt32, root, comm));
      for (int q = 0; q < n; q++)
        for (size_t i = 0; i < c; i++) ASSERT(r[q * c + i] == val(q, i));
    } else {
      CHECK(oxcclScatter(NULL, mine, c, oxcclInt32, root, comm));
      CHECK(oxcclGather(mine, NULL, c, oxcclInt32, root, comm));
    }
    free(mine);
  }
  free(s);
  free(r);
}

static void scatters(oxcclComm_t comm, size_t c) {
  size_t t = c * (size_t)n;
  int32_t *s = alloc(t), *r = alloc(c);
  fill(s, t, test_rank, 0);
  CHECK(oxcclReduceScatter(s, r, c, oxcclInt32, oxcclSum, comm));
  for (size_t i = 0; i < c; i++) {
    int64_t want = 0;
    for (int q = 0; q < n; q++) want += val(q, test_rank * c + i);
    ASSERT(r[i] == want);
  }
  /* In place: the result lands in block `rank` of sendbuff. */
  CHECK(oxcclReduceScatter(s, s + test_rank * c, c, oxcclInt32, oxcclMin, comm));
  for (size_t i = 0; i < c; i++) ASSERT(s[test_rank * c + i] == val(0, test_rank * c + i));

  /* All-to-all: block p of rank q's send = val(q, p*c + i). */
  int32_t *a = alloc(t), *b = alloc(t);
  fill(a, t, test_rank, 0);
  CHECK(oxcclAlltoAll(a, b, c, oxcclInt32, comm));
  for (int q = 0; q < n; q++)
    for (size_t i = 0; i < c; i++) ASSERT(b[q * c + i] == val(q, test_rank * c + i));
  CHECK(oxcclAllToAll(a, a, c, oxcclInt32, comm)); /* in place, through the older spelling */
  ASSERT(memcmp(a, b, t * sizeof *a) == 0);
  free(a);
  free(b);
  free(s);
  free(r);
}

static void vees(oxcclComm_t comm) {
  /* Rank p contributes p+1 elements. */
  size_t counts[8], total = 0, off = 0;
  for (int q = 0; q < n; q++) {
    counts[q] = (size_t)q + 1;
    if (q < test_rank) off += counts[q];
    total += counts[q];
  }
  int32_t *s = alloc(total), *r = alloc(total);
  fill(s, counts[test_rank], test_rank, 0);
  CHECK(oxcclAllGatherV(s, r, counts, oxcclInt32, comm));
  size_t k = 0;
  for (int q = 0; q < n; q++)
    for (size_t i = 0; i < counts[q]; i++) ASSERT(r[k++] == val(q, i));
  /* In place. */
  for (size_t i = 0; i < total; i++) r[i] = -1;
  fill(r + off, counts[test_rank], test_rank, 0);
  CHECK(oxcclAllGatherV(r + off, r, counts, oxcclInt32, comm));
  k = 0;
  for (int q = 0; q < n; q++)
    for (size_t i = 0; i < counts[q]; i++) ASSERT(r[k++] == val(q, i));

  /* Reduce-scatter-v: block q of the sum goes to rank q. */
  fill(s, total, test_rank, 0);
  int32_t *mine = alloc(counts[test_rank]);
  CHECK(oxcclReduceScatterV(s, mine, counts, oxcclInt32, oxcclSum, comm));
  for (size_t i = 0; i < counts[test_rank]; i++) {
    int64_t want = 0;
    for (int q = 0; q < n; q++) want += val(q, off + i);
    ASSERT(mine[i] == want);
  }

  /* All-to-all-v: rank p sends (p + q + 1) elements to rank q. */
  size_t sc[8], rc[8], st = 0, rt = 0;
  for (int q = 0; q < n; q++) {
    sc[q] = (size_t)(test_rank + q + 1);
    rc[q] = (size_t)(q + test_rank + 1);
    st += sc[q];
    rt += rc[q];
  }
  int32_t *as = alloc(st), *ar = alloc(rt);
  k = 0;
  for (int q = 0; q < n; q++)
    for (size_t i = 0; i < sc[q]; i++) as[k++] = val(test_rank, (size_t)q * 100 + i);
  CHECK(oxcclAllToAllV(as, sc, ar, rc, oxcclInt32, comm));
  k = 0;
  for (int q = 0; q < n; q++)
    for (size_t i = 0; i < rc[q]; i++) ASSERT(ar[k++] == val(q, (size_t)test_rank * 100 + i));
  free(as);
  free(ar);
  free(mine);
  free(s);
  free(r);
}

static void point_to_point(oxcclComm_t comm) {
  int next = (test_rank + 1) % n, prev = (test_rank + n - 1) % n;
  int32_t out[100], in[100], in2[100];
  fill(out, 100, test_rank, 0);
  /* A ring shift: every rank sends and receives at once, so it must be a group. */
  CHECK(oxcclGroupStart());
  CHECK(oxcclSend(out, 100, oxcclInt32, next, comm));
  CHECK(oxcclRecv(in, 100, oxcclInt32, prev, comm));
  CHECK(oxcclGroupEnd());
  for (int i = 0; i < 100; i++) ASSERT(in[i] == val(prev, i));
  /* Tags: two messages to the same peer, received by tag. */
  CHECK(oxcclGroupStart());
  CHECK(oxcclSendTagged(out, 100, oxcclInt32, next, 7, comm));
  CHECK(oxcclSendTagged(out, 50, oxcclInt32, next, 8, comm));
  CHECK(oxcclRecvTagged(in, 100, oxcclInt32, prev, 7, comm));
  CHECK(oxcclRecvTagged(in2, 50, oxcclInt32, prev, 8, comm));
  CHECK(oxcclGroupEnd());
  for (int i = 0; i < 100; i++) ASSERT(in[i] == val(prev, i));
  for (int i = 0; i < 50; i++) ASSERT(in2[i] == val(prev, i));
  /* Non-blocking. The calls of one communicator run one after the other in issue order (the
   * core's rule), so a ring of IRecv-then-ISend on every rank would wait on itself: rank 0
   * sends first. */
  oxcclRequest_t rr = NULL, sr = NULL;
  memset(in, 0, sizeof in);
  if (test_rank == 0) CHECK(oxcclISend(out, 100, oxcclInt32, next, 3, comm, &sr));
  CHECK(oxcclIRecv(in, 100, oxcclInt32, prev, 3, comm, &rr));
  if (test_rank != 0) CHECK(oxcclISend(out, 100, oxcclInt32, next, 3, comm, &sr));
  ASSERT(rr != NULL && sr != NULL);
  CHECK(oxcclWait(sr));
  CHECK(oxcclWait(rr));
  CHECK(oxcclRequestFree(sr));
  CHECK(oxcclRequestFree(rr));
  for (int i = 0; i < 100; i++) ASSERT(in[i] == val(prev, i));
  /* A group started without blocking (oxcclGroupEndAsync): one request for a ring exchange,
   * which as separate non-blocking calls in issue order would wait on itself. */
  oxcclRequest_t gr = NULL;
  memset(in, 0, sizeof in);
  CHECK(oxcclGroupStart());
  CHECK(oxcclSendTagged(out, 100, oxcclInt32, next, 9, comm));
  CHECK(oxcclRecvTagged(in, 100, oxcclInt32, prev, 9, comm));
  CHECK(oxcclGroupEndAsync(&gr));
  ASSERT(gr != NULL);
  CHECK(oxcclWaitTimeout(gr, 60000));
  CHECK(oxcclWaitTimeout(gr, -1)); /* done: the same result again */
  CHECK(oxcclRequestFree(gr));
  for (int i = 0; i < 100; i++) ASSERT(in[i] == val(prev, i));
  EXPECT(oxcclGroupEndAsync(&gr), oxcclInvalidUsage); /* no group open */
  CHECK(oxcclGroupStart());
  EXPECT(oxcclGroupEndAsync(&gr), oxcclInvalidUsage); /* nothing queued (and the group is closed) */
  EXPECT_MSG(NULL, "queued no calls");
  EXPECT(oxcclGroupEnd(), oxcclInvalidUsage);
  EXPECT(oxcclWaitTimeout(NULL, 1), oxcclInvalidArgument);
  /* A buffer used by two calls of one group, one of them writing: refused. */
  CHECK(oxcclGroupStart());
  CHECK(oxcclSend(out, 100, oxcclInt32, next, comm));
  CHECK(oxcclRecv(out, 100, oxcclInt32, prev, comm));
  EXPECT(oxcclGroupEnd(), oxcclInvalidArgument);
  EXPECT_MSG(NULL, "overlapping");
  EXPECT(oxcclGroupEnd(), oxcclInvalidUsage); /* no group open */
}

static void non_blocking(oxcclComm_t comm) {
  enum { C = 50000 };
  float *a = (float *)malloc(C * sizeof(float)), *b = (float *)malloc(C * sizeof(float));
  ASSERT(a && b);
  for (int i = 0; i < C; i++) {
    a[i] = (float)test_rank;
    b[i] = 1;
  }
  oxcclRequest_t r1, r2, r3;
  CHECK(oxcclIAllReduce(a, a, C, oxcclFloat32, oxcclSum, comm, &r1));
  CHECK(oxcclIAllReduce(b, b, C, oxcclFloat32, oxcclAvg, comm, &r2));
  CHECK(oxcclIBarrier(comm, &r3));
  int done = 0;
  while (!done) CHECK(oxcclTest(r3, &done)); /* calls run in issue order: r1 and r2 are done too */
  CHECK(oxcclTest(r1, &done));
  ASSERT(done == 1);
  CHECK(oxcclWait(r2));
  CHECK(oxcclWait(r1));
  for (int i = 0; i < C; i++) ASSERT(a[i] == (float)(n * (n - 1) / 2) && b[i] == 1);
  CHECK(oxcclRequestFree(r1));
  CHECK(oxcclRequestFree(r2));
  CHECK(oxcclRequestFree(r3));
  CHECK(oxcclRequestFree(NULL));
  EXPECT(oxcclWait(NULL), oxcclInvalidArgument);
  EXPECT(oxcclTest(NULL, &done), oxcclInvalidArgument);
  EXPECT(oxcclIAllReduce(a, a, C, oxcclFloat32, oxcclSum, comm, NULL), oxcclInvalidArgument);

  /* The other non-blocking forms, all in flight at once. */
  int32_t s[16], bc[16], ag[16 * 8], rs[4], aa[16 * 8], aa2[16 * 8], g[16 * 8], sc[4], red[16];
  fill(s, 16, test_rank, 0);
  fill(aa, 16 * (size_t)n, test_rank, 0);
  size_t vc[8], tot = 0;
  for (int q = 0; q < n; q++) tot += (vc[q] = 2);
  int32_t agv[16], rsv[2];
  oxcclRequest_t rq[10];
  CHECK(oxcclIBroadcast(s, bc, 16, oxcclInt32, 0, comm, &rq[0]));
  CHECK(oxcclIAllGather(s, ag, 16, oxcclInt32, comm, &rq[1]));
  CHECK(oxcclIReduceScatter(aa, rs, 4, oxcclInt32, oxcclSum, comm, &rq[2]));
  CHECK(oxcclIAlltoAll(aa, aa2, 16, oxcclInt32, comm, &rq[3]));
  CHECK(oxcclIGather(s, g, 16, oxcclInt32, n - 1, comm, &rq[4]));
  CHECK(oxcclIScatter(aa, sc, 4, oxcclInt32, 0, comm, &rq[5]));
  CHECK(oxcclIReduce(s, red, 16, oxcclInt32, oxcclMax, 0, comm, &rq[6]));
  CHECK(oxcclIAllGatherV(s, agv, vc, oxcclInt32, comm, &rq[7]));
  CHECK(oxcclIReduceScatterV(aa, rsv, vc, oxcclInt32, oxcclSum, comm, &rq[8]));
  CHECK(oxcclIAllToAllV(aa, vc, aa2 + 16 * n / 2, vc, oxcclInt32, comm, &rq[9]));
  (void)tot;
  for (int k = 9; k >= 0; k--) {
    CHECK(oxcclWait(rq[k]));
    CHECK(oxcclRequestFree(rq[k]));
  }
  for (int i = 0; i < 16; i++) ASSERT(bc[i] == val(0, i));
  for (int q = 0; q < n; q++) ASSERT(ag[q * 16 + 5] == val(q, 5));
  if (test_rank == 0) ASSERT(red[3] == val(n - 1, 3));
  if (test_rank == n - 1) ASSERT(g[16 * 0 + 2] == val(0, 2));
  ASSERT(sc[1] == val(0, (size_t)test_rank * 4 + 1));
  ASSERT(agv[2 * (n - 1) + 1] == val(n - 1, 1));
  free(a);
  free(b);
}

/* A second communicator made the NCCL way (id broadcast over the first), and one group with calls
 * on both: they run concurrently. */
static void two_comms(oxcclComm_t comm) {
  oxcclUniqueId id;
  if (test_rank == 0) CHECK(oxcclGetUniqueId(&id));
  CHECK(oxcclBroadcast(&id, &id, sizeof id, oxcclUint8, 0, comm));
  oxcclComm_t second;
  CHECK(oxcclCommInitRank(&second, n, id, test_rank));
  int32_t x[8], y[8];
  for (int i = 0; i < 8; i++) x[i] = y[i] = test_rank + 1;
  CHECK(oxcclGroupStart());
  CHECK(oxcclAllReduce(x, x, 8, oxcclInt32, oxcclSum, second));
  CHECK(oxcclGroupStart()); /* nested */
  CHECK(oxcclAllReduce(y, y, 8, oxcclInt32, oxcclProd, comm));
  CHECK(oxcclGroupEnd());
  CHECK(oxcclGroupEnd());
  int32_t prod = 1;
  for (int q = 1; q <= n; q++) prod *= q;
  for (int i = 0; i < 8; i++) ASSERT(x[i] == n * (n + 1) / 2 && y[i] == prod);
  CHECK(oxcclCommDestroy(second));
}

/* Pre-multiplied sums (FSDP's gradient scaling): rank r multiplies its input by (r + 1) / 2. */
static void premul_sums(oxcclComm_t comm) {
  float factor = 0.5f * (float)(test_rank + 1);
  float fsum = 0.25f * (float)(n * (n + 1)); /* the sum over ranks of (r + 1) / 2 */
  oxcclRedOp_t pm;
  CHECK(oxcclRedOpCreatePreMulSum(&pm, &factor, oxcclFloat32, oxcclScalarHostImmediate, comm));
  ASSERT((int)pm >= (int)oxcclNumOps);
  float x[8], y[8];
  for (int i = 0; i < 8; i++) x[i] = (float)(i + 1);
  CHECK(oxcclAllReduce(x, y, 8, oxcclFloat32, pm, comm));
  for (int i = 0; i < 8; i++) {
    ASSERT(y[i] == (float)(i + 1) * fsum);
    ASSERT(x[i] == (float)(i + 1)); /* the input is not scaled in place */
  }
  CHECK(oxcclAllReduce(x, x, 8, oxcclFloat32, pm, comm)); /* in place */
  for (int i = 0; i < 8; i++) ASSERT(x[i] == (float)(i + 1) * fsum);
  /* Reduce-scatter, out of place and in place; reduce to root 0. */
  float big[8 * 8], blk[8];
  for (int i = 0; i < 8 * n; i++) big[i] = (float)(i % 8 + 1);
  CHECK(oxcclReduceScatter(big, blk, 8, oxcclFloat32, pm, comm));
  for (int i = 0; i < 8; i++) ASSERT(blk[i] == (float)(i + 1) * fsum);
  CHECK(oxcclReduceScatter(big, big + test_rank * 8, 8, oxcclFloat32, pm, comm));
  for (int i = 0; i < 8; i++) ASSERT(big[test_rank * 8 + i] == (float)(i + 1) * fsum);
  for (int i = 0; i < 8; i++) x[i] = 2.0f;
  CHECK(oxcclReduce(x, y, 8, oxcclFloat32, pm, 0, comm));
  if (test_rank == 0)
    for (int i = 0; i < 8; i++) ASSERT(y[i] == 2.0f * fsum);
  /* The element type must match the operator's; v-variants refuse it clearly. */
  int32_t z[4] = {1, 2, 3, 4};
  EXPECT(oxcclAllReduce(z, z, 4, oxcclInt32, pm, comm), oxcclInvalidArgument);
  EXPECT_MSG(comm, "pre-multiplies float");
  CHECK(oxcclRedOpDestroy(pm, comm));
  EXPECT(oxcclAllReduce(x, y, 8, oxcclFloat32, pm, comm), oxcclInvalidArgument);
  EXPECT(oxcclRedOpDestroy(pm, comm), oxcclInvalidArgument);
  EXPECT(oxcclRedOpDestroy(oxcclSum, comm), oxcclInvalidArgument);
  /* oxcclScalarDevice: the scalar is read at each call; integers too. */
  int32_t k = 1;
  CHECK(oxcclRedOpCreatePreMulSum(&pm, &k, oxcclInt32, oxcclScalarDevice, comm));
  k = 3;
  for (int i = 0; i < 4; i++) z[i] = i;
  CHECK(oxcclAllReduce(z, z, 4, oxcclInt32, pm, comm));
  for (int i = 0; i < 4; i++) ASSERT(z[i] == 3 * i * n);
  CHECK(oxcclRedOpDestroy(pm, comm));
  EXPECT(oxcclRedOpCreatePreMulSum(&pm, &k, oxcclInt32, (oxcclScalarResidence_t)7, comm),
         oxcclInvalidArgument);
  EXPECT(oxcclRedOpCreatePreMulSum(NULL, &k, oxcclInt32, oxcclScalarDevice, comm),
         oxcclInvalidArgument);
}

int main(void) {
  oxcclComm_t comm;
  CHECK(oxcclCommInitFromEnv(&comm));
  CHECK(oxcclCommUserRank(comm, &test_rank));
  CHECK(oxcclCommCount(comm, &n));
  ASSERT(n <= 8);
  static const size_t counts[] = {0, 1, 33, 20000};
  for (size_t k = 0; k < sizeof counts / sizeof counts[0]; k++) {
    broadcast_reduce(comm, counts[k]);
    gathers(comm, counts[k]);
    scatters(comm, counts[k]);
  }
  vees(comm);
  point_to_point(comm);
  non_blocking(comm);
  two_comms(comm);
  premul_sums(comm);
  /* Bad roots and peers. */
  int32_t z[4] = {0, 0, 0, 0};
  EXPECT(oxcclBroadcast(z, z, 4, oxcclInt32, n, comm), oxcclInvalidArgument);
  EXPECT_MSG(comm, "root");
  EXPECT(oxcclSend(z, 4, oxcclInt32, -1, comm), oxcclInvalidArgument);
  EXPECT(oxcclAllGatherV(z, z, NULL, oxcclInt32, comm), oxcclInvalidArgument);
  EXPECT_MSG(comm, "recvcounts is NULL");
  oxcclResult_t async;
  CHECK(oxcclCommGetAsyncError(comm, &async));
  ASSERT(async == oxcclSuccess);
  CHECK(oxcclBarrier(comm));
  CHECK(oxcclCommDestroy(comm));
  printf("rank %d of %d: collectives ok\n", test_rank, n);
  return 0;
}
