/* Helpers shared by the C test programs: every call is checked, failures say where and why. */
#ifndef OXCCL_TEST_CHECK_H
#define OXCCL_TEST_CHECK_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "oxccl.h"

static int test_rank = -1;

#define FAIL(...)                                                              \
  do {                                                                         \
    fprintf(stderr, "[rank %d] %s:%d: ", test_rank, __FILE__, __LINE__);       \
    fprintf(stderr, __VA_ARGS__);                                              \
    fputc('\n', stderr);                                                       \
    exit(1);                                                                   \
  } while (0)

/* The call must succeed. */
#define CHECK(call)                                                            \
  do {                                                                         \
    oxcclResult_t r_ = (call);                                                 \
    if (r_ != oxcclSuccess)                                                    \
      FAIL("%s -> %d (%s): %s", #call, (int)r_, oxcclGetErrorString(r_),       \
           oxcclGetLastError(NULL));                                           \
  } while (0)

/* The call must fail with `code`. */
#define EXPECT(call, code)                                                     \
  do {                                                                         \
    oxcclResult_t r_ = (call);                                                 \
    if (r_ != (code))                                                          \
      FAIL("%s -> %d (%s), expected %s: %s", #call, (int)r_,                   \
           oxcclGetErrorString(r_), #code, oxcclGetLastError(NULL));           \
  } while (0)

#define ASSERT(cond)                                                           \
  do {                                                                         \
    if (!(cond)) FAIL("assertion failed: %s", #cond);                          \
  } while (0)

/* The last error on `comm` (or the thread, for NULL) must mention `what`. */
#define EXPECT_MSG(comm, what)                                                 \
  do {                                                                         \
    const char *m_ = oxcclGetLastError(comm);                                  \
    if (m_ == NULL || strstr(m_, (what)) == NULL)                              \
      FAIL("last error %s does not mention \"%s\"", m_ ? m_ : "(null)", what); \
  } while (0)

/* IEEE binary16 and bfloat16 from/to float, for the small integers the tests use (exact). */
static inline uint16_t f32_to_f16(float f) {
  uint32_t x;
  memcpy(&x, &f, 4);
  uint32_t sign = (x >> 16) & 0x8000u;
  int32_t exp = (int32_t)((x >> 23) & 0xff) - 127 + 15;
  uint32_t mant = x & 0x7fffffu;
  if ((x & 0x7fffffffu) == 0) return (uint16_t)sign;
  if (exp <= 0 || exp >= 31) FAIL("%g is not a normal half", (double)f);
  return (uint16_t)(sign | ((uint32_t)exp << 10) | (mant >> 13));
}

static inline float f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ffu;
  uint32_t x;
  if (exp == 0 && mant == 0) x = sign;
  else if (exp == 0 || exp == 31) { x = 0x7fc00000u; } /* not produced by the tests */
  else x = sign | ((exp - 15 + 127) << 23) | (mant << 13);
  float f;
  memcpy(&f, &x, 4);
  return f;
}

static inline uint16_t f32_to_bf16(float f) {
  uint32_t x;
  memcpy(&x, &f, 4);
  return (uint16_t)(x >> 16); /* exact for the small integers used */
}

static inline float bf16_to_f32(uint16_t b) {
  uint32_t x = (uint32_t)b << 16;
  float f;
  memcpy(&f, &x, 4);
  return f;
}

static inline int env_int(const char *name) {
  const char *v = getenv(name);
  if (v == NULL) FAIL("%s is not set", name);
  return atoi(v);
}

#endif
