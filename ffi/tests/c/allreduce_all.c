/* Every element type x every operator, in place and out of place, several counts: results
 * checked exactly on every rank. Ranks come from the environment (oxcclCommInitFromEnv). */
#include "check.h"

static int nranks;

/* Rank r's input element i for `op`, as a small integer (exact in every type). */
static double value(oxcclRedOp_t op, int r, size_t i) {
  switch (op) {
    case oxcclProd: {
      static const int v[3] = {-1, 1, 2};
      return v[(r + (int)i) % 3];
    }
    case oxcclAvg: {
      /* base(i) + d(r), where the d(r) sum to 0: the average is base(i), >= 0 for every rank's
       * input (so unsigned types do not wrap either). */
      double base = (double)(i % 9) + 3;
      double d = r < nranks - 1 ? r : -(double)(nranks - 1) * (nranks - 2) / 2;
      return base + d;
    }
    default:
      return (double)((r * 7 + (int)i * 3) % 9) - 4;
  }
}

#define DEFINE_TEST(NAME, T, TO, FROM, LESS)                                        \
  static T NAME##_to(double x) { return TO; }                                       \
  static double NAME##_from(T x) { return FROM; }                                   \
  static int NAME##_less(T a, T b) { return LESS; }                                 \
  static void test_##NAME(oxcclComm_t comm, oxcclDataType_t dt, oxcclRedOp_t op,    \
                          size_t count, int in_place) {                             \
    T *send = (T *)malloc((count + 1) * sizeof(T));                                 \
    T *recv = (T *)malloc((count + 1) * sizeof(T));                                 \
    ASSERT(send != NULL && recv != NULL);                                           \
    for (size_t i = 0; i < count; i++) {                                            \
      send[i] = NAME##_to(value(op, test_rank, i));                                 \
      recv[i] = NAME##_to(-77);                                                     \
    }                                                                               \
    if (in_place)                                                                   \
      CHECK(oxcclAllReduce(send, send, count, dt, op, comm));                       \
    else                                                                            \
      CHECK(oxcclAllReduce(send, recv, count, dt, op, comm));                       \
    const T *out = in_place ? send : recv;                                          \
    for (size_t i = 0; i < count; i++) {                                            \
      T want;                                                                       \
      if (op == oxcclMax || op == oxcclMin) {                                       \
        want = NAME##_to(value(op, 0, i));                                          \
        for (int r = 1; r < nranks; r++) {                                          \
          T x = NAME##_to(value(op, r, i));                                         \
          if (op == oxcclMax ? NAME##_less(want, x) : NAME##_less(x, want)) want = x; \
        }                                                                           \
      } else {                                                                      \
        double acc = op == oxcclProd ? 1 : 0;                                       \
        for (int r = 0; r < nranks; r++) {                                          \
          double x = value(op, r, i);                                               \
          acc = op == oxcclProd ? acc * x : acc + x;                                \
        }                                                                           \
        if (op == oxcclAvg) acc /= nranks;                                          \
        want = NAME##_to(acc);                                                      \
      }                                                                             \
      if (memcmp(&out[i], &want, sizeof(T)) != 0)                                   \
        FAIL("%s op %d count %zu %s: element %zu is %g, expected %g", #NAME, (int)op, \
             count, in_place ? "in place" : "out of place", i, NAME##_from(out[i]),  \
             NAME##_from(want));                                                    \
    }                                                                               \
    if (!in_place) /* the input is untouched */                                     \
      for (size_t i = 0; i < count; i++)                                            \
        ASSERT(NAME##_from(send[i]) == NAME##_from(NAME##_to(value(op, test_rank, i)))); \
    free(send);                                                                     \
    free(recv);                                                                     \
  }

/* Integers wrap modulo 2^k when converted from a negative value (through long long), and compare
 * as the type (a wrapped -1 is the largest unsigned value). */
DEFINE_TEST(i8, int8_t, (int8_t)(long long)x, (double)x, a < b)
DEFINE_TEST(u8, uint8_t, (uint8_t)(long long)x, (double)x, a < b)
DEFINE_TEST(i32, int32_t, (int32_t)(long long)x, (double)x, a < b)
DEFINE_TEST(u32, uint32_t, (uint32_t)(long long)x, (double)x, a < b)
DEFINE_TEST(i64, int64_t, (int64_t)(long long)x, (double)x, a < b)
DEFINE_TEST(u64, uint64_t, (uint64_t)(long long)x, (double)x, a < b)
DEFINE_TEST(f16, uint16_t, f32_to_f16((float)x), (double)f16_to_f32(x), f16_to_f32(a) < f16_to_f32(b))
DEFINE_TEST(f32, float, (float)x, (double)x, a < b)
DEFINE_TEST(f64, double, x, x, a < b)
DEFINE_TEST(bf16, uint16_t, f32_to_bf16((float)x), (double)bf16_to_f32(x), bf16_to_f32(a) < bf16_to_f32(b))

int main(void) {
  oxcclComm_t comm = NULL;
  CHECK(oxcclCommInitFromEnv(&comm));
  ASSERT(comm != NULL);
  CHECK(oxcclCommUserRank(comm, &test_rank));
  CHECK(oxcclCommCount(comm, &nranks));
  ASSERT(test_rank == env_int("OXCCL_RANK"));
  ASSERT(nranks == env_int("OXCCL_WORLD_SIZE"));
  {
    /* The launcher runs every rank on this machine: one host, local rank = rank. */
    int host = -1, nhosts = -1, local_rank = -1, local_size = -1, rail = -1;
    CHECK(oxcclCommTopology(comm, &host, &nhosts, &local_rank, &local_size, &rail));
    ASSERT(host == 0 && nhosts == 1 && local_rank == test_rank && local_size == nranks);
    ASSERT(rail >= 0);
    CHECK(oxcclCommTopology(comm, NULL, &nhosts, NULL, NULL, NULL));
    EXPECT(oxcclCommTopology(NULL, &host, NULL, NULL, NULL, NULL), oxcclInvalidArgument);
  }

  static const size_t counts[] = {0, 1, 7, 1000, 70000};
  static const oxcclRedOp_t ops[] = {oxcclSum, oxcclProd, oxcclMax, oxcclMin, oxcclAvg};
  for (size_t c = 0; c < sizeof counts / sizeof counts[0]; c++) {
    for (size_t o = 0; o < sizeof ops / sizeof ops[0]; o++) {
      for (int in_place = 0; in_place < 2; in_place++) {
        size_t n = counts[c];
        oxcclRedOp_t op = ops[o];
        test_i8(comm, oxcclInt8, op, n, in_place);
        test_u8(comm, oxcclUint8, op, n, in_place);
        test_i32(comm, oxcclInt32, op, n, in_place);
        test_u32(comm, oxcclUint32, op, n, in_place);
        test_i64(comm, oxcclInt64, op, n, in_place);
        test_u64(comm, oxcclUint64, op, n, in_place);
        test_f16(comm, oxcclFloat16, op, n, in_place);
        test_f32(comm, oxcclFloat32, op, n, in_place);
        test_f64(comm, oxcclFloat64, op, n, in_place);
        test_bf16(comm, oxcclBfloat16, op, n, in_place);
      }
    }
  }
  CHECK(oxcclBarrier(comm));
  oxcclResult_t async = oxcclInternalError;
  CHECK(oxcclCommGetAsyncError(comm, &async));
  ASSERT(async == oxcclSuccess);
  CHECK(oxcclCommDestroy(comm));
  printf("rank %d of %d: all-reduce ok\n", test_rank, nranks);
  return 0;
}
